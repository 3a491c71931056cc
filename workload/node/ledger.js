'use strict';
// ledger: Node.js http server of the DeepTrace demo workload, backed by
// PostgreSQL through a node-postgres (pg) pool. SQL carries literal values.
//
//   POST /entries             -> INSERT INTO ledger_entries ... RETURNING id
//   GET  /entries?order_id=N  -> SELECT ... FROM ledger_entries WHERE order_id = N
//
// Designed failure: GET answers 500 when order_id % 89 == 0 (after the query).

const http = require('http');
const { Pool } = require('pg');
const { TruthLog, nowNs, addr, serve, readBody, parseArgs, onSignals } = require('./truth');

const LEDGER_MOD = 89;
const args = parseArgs({ 'listen-port': '18085', pg: 'postgres://postgres@127.0.0.1:5432/workload', 'pg-conns': '8' });
const truth = new TruthLog('ledger');
const pool = new Pool({ connectionString: args.pg, max: Number(args['pg-conns']), idleTimeoutMillis: 0 });

/** One SQL statement on a pooled connection, recorded as an "out" line. */
async function query(ctx, sql) {
  const client = await pool.connect();
  const sock = client.connection && client.connection.stream;
  const local = sock ? addr(sock.localAddress, sock.localPort) : '';
  const peer = sock ? addr(sock.remoteAddress, sock.remotePort) : '';
  const start = nowNs();
  let err = null;
  let res;
  try {
    res = await client.query(sql);
  } catch (e) {
    err = e;
  } finally {
    client.release();
  }
  const rec = { parent_req_id: ctx.reqId, target: 'postgres', proto: 'postgres', op: sql, local, peer,
    status: err ? -1 : 0, ok: !err };
  if (err) rec.error = String(err.message || err);
  truth.writeOut(rec, start, nowNs());
  if (err) throw err;
  return res;
}

function int(v) {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw Object.assign(new Error(`bad integer ${v}`), { status: 400 });
  return n;
}

async function handler(req, ctx) {
  const url = new URL(req.url, 'http://ledger');
  if (url.pathname === '/entries' && req.method === 'POST') {
    let b;
    try {
      b = JSON.parse(await readBody(req));
      b = { order_id: int(b.order_id), customer_id: int(b.customer_id), amount_cents: int(b.amount_cents) };
    } catch (e) {
      return ctx.send(400, { error: 'bad entry' });
    }
    const r = await query(ctx, `INSERT INTO ledger_entries (order_id, customer_id, amount_cents) VALUES (${b.order_id}, ${b.customer_id}, ${b.amount_cents}) RETURNING id`);
    return ctx.send(201, { id: Number(r.rows[0].id), ...b });
  }
  if (url.pathname === '/entries' && req.method === 'GET') {
    let orderId;
    try {
      orderId = int(url.searchParams.get('order_id'));
    } catch (e) {
      return ctx.send(400, { error: 'bad order_id' });
    }
    const r = await query(ctx, `SELECT id, customer_id, amount_cents FROM ledger_entries WHERE order_id = ${orderId} ORDER BY id LIMIT 10`);
    if (orderId % LEDGER_MOD === 0) return ctx.send(500, { error: `ledger partition for order ${orderId} offline` });
    return ctx.send(200, r.rows.map((x) => ({ id: Number(x.id), customer_id: Number(x.customer_id), amount_cents: Number(x.amount_cents) })));
  }
  return ctx.send(404, { error: 'not found' });
}

const server = http.createServer(serve(truth, handler));
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;
server.listen(Number(args['listen-port']), '127.0.0.1', () => {
  console.log(`ledger listening on 127.0.0.1:${args['listen-port']} (pid ${process.pid})`);
});
onSignals(() => {
  truth.close();
  pool.end().catch(() => {});
  process.exit(0);
});
