// Package rules holds the workload's deterministic failure rules. The same
// rules are implemented by the Python and Node services (see
// docs/workload.md, "Designed failures"); the load generator uses this copy to
// predict which requests must fail, so any other failure is unexpected.
package rules

// NumSKUs is the number of products seeded in PostgreSQL and Redis.
const NumSKUs = 10000

// Failure moduli: a request fails on purpose when an id is a multiple.
const (
	OrdersGetMod     = 97  // orders GET /orders/{id}: 500 when id % 97 == 0
	LedgerGetMod     = 89  // ledger GET /entries?order_id=id: 500 when id % 89 == 0
	CatalogMod       = 101 // catalog GET /items/{sku}: 500 when sku % 101 == 0
	InventoryGetMod  = 79  // inventory GetStock: NOT_FOUND when sku % 79 == 0
	InventoryResvMod = 61  // inventory Reserve: RESOURCE_EXHAUSTED when sku % 61 == 0
	PaymentsDeclMod  = 71  // payments POST /payments: 402 when customer_id % 71 == 0
)

// SKUForOrder is the SKU an existing order refers to (used by gateway for the
// catalog half of GET /api/orders/{id}).
func SKUForOrder(orderID int64) int64 {
	return (orderID*7)%NumSKUs + 1
}

// ExpectOrderGet returns the HTTP status gateway must answer for
// GET /api/orders/{id}.
func ExpectOrderGet(id int64) int {
	if id%OrdersGetMod == 0 || id%LedgerGetMod == 0 || SKUForOrder(id)%CatalogMod == 0 {
		return 502
	}
	return 200
}

// ExpectCheckout returns the HTTP status gateway must answer for
// POST /api/checkout {customer_id, sku, qty}.
func ExpectCheckout(customerID, sku int64) int {
	switch {
	case sku%InventoryResvMod == 0:
		return 409
	case sku%CatalogMod == 0:
		return 502
	case customerID%PaymentsDeclMod == 0:
		return 402
	}
	return 201
}

// ExpectProduct returns the HTTP status gateway must answer for
// GET /api/products/{sku}.
func ExpectProduct(sku int64) int {
	switch {
	case sku%InventoryGetMod == 0:
		return 404
	case sku%CatalogMod == 0:
		return 502
	}
	return 200
}

// ExpectSearch: search has no designed failure.
func ExpectSearch() int { return 200 }
