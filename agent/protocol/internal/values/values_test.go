package values

import (
	"reflect"
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
)

func TestFromPathAndQuery(t *testing.T) {
	vs := FromPath(nil, "/api/v1/users/42/orders/9f86d081884c7d659a2feaa0c55ad015/items/sku-1234/reviews")
	vs = FromQuery(vs, "page=2&q=&trace=abc")
	want := []string{"42", "9f86d081884c7d659a2feaa0c55ad015", "sku-1234", "2", "abc"}
	if !reflect.DeepEqual(vs, want) {
		t.Errorf("%q, want %q", vs, want)
	}
}

func TestBounds(t *testing.T) {
	var vs []string
	for i := 0; i < 100; i++ {
		vs = Add(vs, strings.Repeat(string(rune('a'+i%26)), i+1)+strings.Repeat("y", 1000))
	}
	if len(vs) != protocol.MaxValues {
		t.Errorf("%d values", len(vs))
	}
	for _, v := range vs {
		if len(v) > protocol.MaxValueLen {
			t.Errorf("value of %d bytes", len(v))
		}
	}
}
