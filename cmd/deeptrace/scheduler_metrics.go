package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// metricsScheduleFlags configure the two schedules the scheduler runs
// beside assembly: the RED metrics rollup (one task per minute and service
// shard) and the alert rule evaluation (one task per minute). Workers run
// the tasks (queue "metrics").
type metricsScheduleFlags struct {
	rollup   rollup.SchedulerConfig
	alerts   alerting.SchedulerConfig
	noRollup bool
	noAlerts bool
}

func (f *metricsScheduleFlags) register(fs *pflag.FlagSet) {
	fs.IntVar(&f.rollup.Shards, "rollup-shards", 8, "service shards per minute of the metrics rollup")
	fs.DurationVar(&f.rollup.Lateness, "rollup-lateness", 30*time.Second, "roll a minute up this long after it ends")
	fs.StringVar(&f.rollup.Spec, "rollup-schedule", "@every 10s", "cron schedule of the rollup ticks")
	fs.DurationVar(&f.rollup.MaxBackfill, "rollup-max-backfill", 6*time.Hour, "catch up on at most this much of missed rollups after downtime")
	fs.DurationVar(&f.rollup.LateHorizon, "rollup-late-horizon", 6*time.Hour, "how far back late spans re-open a rolled-up minute")
	fs.DurationVar(&f.alerts.Delay, "alert-delay", time.Minute, "evaluate the alert rules on the data up to a minute this long after it ends (at least --rollup-lateness; the evaluation also waits for the minute's rollup)")
	fs.DurationVar(&f.alerts.Wait, "alert-wait", time.Minute, "how long past --alert-delay an evaluation waits for its minute's rollup before it is skipped (logged, counted in deeptrace_alert_evaluations_skipped_total)")
	fs.StringVar(&f.alerts.Spec, "alert-schedule", "@every 10s", "cron schedule of the alert evaluation ticks (one evaluation per minute of data whatever the ticks)")
	fs.BoolVar(&f.noRollup, "no-rollup", false, "do not schedule the metrics rollup here")
	fs.BoolVar(&f.noAlerts, "no-alerts", false, "do not schedule alert rule evaluations here")
}

// loops validates the settings and returns the schedules to run; st may
// be nil (no late-span check for the rollup).
func (f *metricsScheduleFlags) loops(rdb redis.UniversalClient, st *store.Store, log *slog.Logger) ([]func(context.Context) error, error) {
	if !f.noRollup && !f.noAlerts && f.alerts.Delay < f.rollup.Lateness {
		return nil, fmt.Errorf("alert-delay %s: at least --rollup-lateness (%s), or every evaluation waits for its rollup", f.alerts.Delay, f.rollup.Lateness)
	}
	var out []func(context.Context) error
	if !f.noRollup {
		f.rollup.Logger = log
		if st == nil {
			f.rollup.LateHorizon = -1
		}
		s, err := rollup.NewScheduler(f.rollup, rdb, st)
		if err != nil {
			return nil, err
		}
		out = append(out, s.Run)
	}
	if !f.noAlerts {
		f.alerts.Logger = log
		s, err := alerting.NewScheduler(f.alerts, rdb)
		if err != nil {
			return nil, err
		}
		out = append(out, s.Run)
	}
	return out, nil
}
