package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
)

// cronParser accepts standard specs, an optional seconds field and
// descriptors such as "@every 10s".
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSpec checks a cron spec as RunCron reads it: five fields, an
// optional leading seconds field, or a descriptor ("@every 10s",
// "@hourly"). The error quotes the spec.
func ParseSpec(spec string) error {
	if _, err := cronParser.Parse(spec); err != nil {
		return fmt.Errorf("cron spec %q: %w", spec, err)
	}
	return nil
}

// RunCron calls tick at once, then on spec (in UTC) until ctx ends; a tick
// still running when the next one is due makes that one skip. It returns
// when ctx ends and the running tick has returned, or at once with
// ParseSpec's error. The schedulers of assembly, the rollup and alert
// evaluation run on it.
func RunCron(ctx context.Context, spec string, tick func()) error {
	sched, err := cronParser.Parse(spec)
	if err != nil {
		return fmt.Errorf("cron spec %q: %w", spec, err)
	}
	c := cron.New(cron.WithParser(cronParser), cron.WithLocation(time.UTC),
		cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)))
	c.Schedule(sched, cron.FuncJob(tick))
	tick()
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
	return nil
}
