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

func TestFromJSON(t *testing.T) {
	got := FromJSON(nil, []byte(`{"id":"ord-1234","user":{"id":42,"name":"ada"},"qty":2,"price":12.5,"tags":["a","b2c3d4"],"cut":"abc1`))
	if want := []string{"ord-1234", "42", "b2c3d4"}; !reflect.DeepEqual(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
}

func TestFromProtobuf(t *testing.T) {
	// field 1: "users.v1.Users"; field 2: varint 4242; field 3: nested {1: "x-77"}; field 4: varint 1.
	msg := []byte{0x0a, 14}
	msg = append(msg, "users.v1.Users"...)
	msg = append(msg, 0x10, 0x92, 0x21, 0x1a, 6, 0x0a, 4, 'x', '-', '7', '7', 0x20, 1)
	got := FromProtobuf(nil, msg)
	if want := []string{"users.v1.Users", "4242", "x-77"}; !reflect.DeepEqual(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
	FromProtobuf(nil, []byte{0xff, 0xff, 0xff}) // garbage: no panic
}

func FuzzBodies(f *testing.F) {
	f.Add([]byte(`{"a":"b-12","c":[1,22]}`))
	f.Add([]byte{0x0a, 2, 'a', '1', 0x10, 0x92, 0x21})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, vs := range [][]string{FromJSON(nil, b), FromProtobuf(nil, b)} {
			if len(vs) > protocol.MaxValues {
				t.Fatal(len(vs))
			}
		}
	})
}
