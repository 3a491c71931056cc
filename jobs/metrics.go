package jobs

import (
	"encoding/json"

	"github.com/prometheus/client_golang/prometheus"
)

type schedulerMetrics struct {
	enqueued   *prometheus.CounterVec
	duplicates prometheus.Counter
	skipped    prometheus.Counter
	late       prometheus.Counter
	reopened   prometheus.Counter
	tickErrors prometheus.Counter
	watermark  prometheus.Gauge
	agentLag   prometheus.Gauge
}

func newSchedulerMetrics() schedulerMetrics {
	return schedulerMetrics{
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_scheduler_tasks_enqueued_total", Help: "Assembly tasks enqueued, by queue.",
		}, []string{"queue"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_scheduler_tasks_duplicate_total", Help: "Assembly tasks not enqueued because their id already existed (another replica or tick).",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_scheduler_windows_skipped_total", Help: "Missed windows older than the backfill limit, not enqueued.",
		}),
		late: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_scheduler_late_windows_total", Help: "Windows found to have received spans after they were assembled.",
		}),
		reopened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_scheduler_windows_reassembled_total", Help: "Windows re-enqueued (all shards) because of late spans.",
		}),
		tickErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_scheduler_tick_errors_total", Help: "Ticks that failed (Redis or the engine unreachable).",
		}),
		watermark: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "deeptrace_scheduler_watermark_seconds", Help: "End of the last window enqueued, unix seconds.",
		}),
		agentLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "deeptrace_scheduler_agent_lag_seconds", Help: "How far behind now the slowest reporting agent's watermark is (0 when no agent reports).",
		}),
	}
}

func (m schedulerMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.enqueued, m.duplicates, m.skipped, m.late, m.reopened, m.tickErrors, m.watermark, m.agentLag}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
