package rpckey

import (
	"testing"

	"deeptrace-workload/internal/inventorypb"
)

func TestKey(t *testing.T) {
	cases := []struct {
		in   any
		want string
	}{
		{&inventorypb.ReserveRequest{Sku: 12, Qty: 2, CustomerId: 5}, "sku=12 qty=2 customer_id=5"},
		{&inventorypb.GetStockRequest{Sku: 33, Warehouse: "eu-2"}, `sku=33 warehouse="eu-2"`},
		{&inventorypb.GetStockRequest{}, `sku=0 warehouse=""`},
		{"not a message", ""},
		{nil, ""},
	}
	for _, c := range cases {
		if got := Key(c.in); got != c.want {
			t.Errorf("Key(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}
