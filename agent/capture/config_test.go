package capture

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string // substring of the error, "" for valid
	}{
		{Config{}, ""},
		{Config{ChunkBytes: 16384, MaxCallBytes: 1 << 20}, ""},
		{Config{ChunkBytes: 1000}, "ChunkBytes"},
		{Config{ChunkBytes: 32768}, "ChunkBytes"},
		{Config{MaxCallBytes: 100}, "MaxCallBytes"},
		{Config{RingBytes: 100000}, "RingBytes"},
		{Config{Comms: []string{"a-name-longer-than-15"}}, "Comms"},
		{Config{PIDs: []int{0}}, "pid"},
		{Config{WakeupBytes: 1 << 30}, "WakeupBytes"},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.cfg, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: error %v, want one naming %s", c.cfg, err, c.want)
		}
	}
}
