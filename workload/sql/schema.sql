-- Schema and seed rows of the DeepTrace demo workload (idempotent; applied by
-- workload/run.sh up). Failure rules live in the data where they can:
--   sku % 61 = 0  -> no stock anywhere   (inventory Reserve: RESOURCE_EXHAUSTED)
--   sku % 79 = 0  -> not listed          (inventory GetStock: NOT_FOUND)
CREATE TABLE IF NOT EXISTS stock (
  sku       bigint  NOT NULL,
  warehouse text    NOT NULL,
  available bigint  NOT NULL,
  listed    boolean NOT NULL,
  PRIMARY KEY (sku, warehouse)
);

CREATE TABLE IF NOT EXISTS reservations (
  id          bigserial PRIMARY KEY,
  sku         bigint NOT NULL,
  qty         bigint NOT NULL,
  customer_id bigint NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ledger_entries (
  id           bigserial PRIMARY KEY,
  order_id     bigint NOT NULL,
  customer_id  bigint NOT NULL,
  amount_cents bigint NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ledger_entries_order_id ON ledger_entries (order_id);

TRUNCATE stock;
INSERT INTO stock (sku, warehouse, available, listed)
SELECT s, w, CASE WHEN s % 61 = 0 THEN 0 ELSE 100 + s % 900 END, s % 79 <> 0
FROM generate_series(1, 10000) AS s, unnest(ARRAY['eu-1', 'eu-2', 'us-1']) AS w;

-- Past orders 1..200000 (every 4th has ledger entries) for GET /api/orders/{id}.
TRUNCATE reservations;
TRUNCATE ledger_entries;
INSERT INTO ledger_entries (order_id, customer_id, amount_cents)
SELECT o, (o * 13) % 100000 + 1, (o * 31) % 50000 + 100
FROM generate_series(4, 200000, 4) AS o;
ANALYZE;
