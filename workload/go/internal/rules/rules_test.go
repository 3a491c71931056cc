package rules

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The Python and Node services and the SQL seed implement the same rules;
// this keeps their constants in step with the ones the load generator uses.
func TestRulesMirrored(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	want := map[string][]string{
		"python/orders.py":   {fmt.Sprintf("ORDERS_GET_MOD = %d", OrdersGetMod)},
		"python/payments.py": {fmt.Sprintf("DECLINE_MOD = %d", PaymentsDeclMod)},
		"node/catalog.js":    {fmt.Sprintf("CATALOG_MOD = %d", CatalogMod)},
		"node/ledger.js":     {fmt.Sprintf("LEDGER_MOD = %d", LedgerGetMod)},
		"sql/schema.sql": {
			fmt.Sprintf("WHEN s %% %d = 0 THEN 0", InventoryResvMod),
			fmt.Sprintf("s %% %d <> 0", InventoryGetMod),
			fmt.Sprintf("generate_series(1, %d)", NumSKUs),
		},
		"python/seed_redis.py": {fmt.Sprintf("NUM_SKUS = %d", NumSKUs)},
	}
	for file, needles := range want {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needles {
			if !strings.Contains(string(b), n) {
				t.Errorf("%s does not contain %q", file, n)
			}
		}
	}
}

func TestExpectations(t *testing.T) {
	if ExpectOrderGet(97) != 502 || ExpectOrderGet(89) != 502 || ExpectOrderGet(1234) != 200 {
		t.Error("ExpectOrderGet")
	}
	if ExpectCheckout(5, 61) != 409 || ExpectCheckout(71, 12) != 402 || ExpectCheckout(5, 101) != 502 || ExpectCheckout(5, 12) != 201 {
		t.Error("ExpectCheckout")
	}
	if ExpectProduct(79) != 404 || ExpectProduct(101) != 502 || ExpectProduct(33) != 200 {
		t.Error("ExpectProduct")
	}
	// About 3% of the mix fails by design.
	fail, n := 0, 0
	for id := int64(1); id <= 200000; id++ {
		n++
		if ExpectOrderGet(id) != 200 {
			fail++
		}
	}
	if r := float64(fail) / float64(n); r < 0.02 || r > 0.05 {
		t.Errorf("order lookups fail at %.3f", r)
	}
}
