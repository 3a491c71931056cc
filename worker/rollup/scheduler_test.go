package rollup_test

import (
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/worker/rollup"
)

func TestSchedulerConfigErrorsNameTheSetting(t *testing.T) {
	for _, c := range []struct {
		cfg  rollup.SchedulerConfig
		want []string
	}{
		{rollup.SchedulerConfig{Spec: "whenever"}, []string{"rollup schedule", `"whenever"`}},
		{rollup.SchedulerConfig{Shards: 5000}, []string{"rollup shards", "5000"}},
		{rollup.SchedulerConfig{MaxBackfill: time.Second}, []string{"rollup max backfill"}},
	} {
		err := c.cfg.Validate()
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: %v, want an error naming %s", c.cfg, err, w)
			}
		}
	}
}
