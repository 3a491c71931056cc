package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/deeptrace/deeptrace/worker/assemble"
)

// prometheusRegisterer is where the worker's collectors go.
type prometheusRegisterer = prometheus.Registerer

type metrics struct {
	tasks         *prometheus.CounterVec
	active        prometheus.Gauge
	seconds       *prometheus.HistogramVec
	spansPerTrace prometheus.Histogram
	tracesWritten prometheus.Counter
	spansFetched  prometheus.Counter
	staleDeleted  prometheus.Counter
	invalid       prometheus.Counter
	links         *prometheus.CounterVec
	otherTasks    *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_worker_tasks_total", Help: "Assembly tasks handled, by queue and outcome (done, failed, locked: another run held the window).",
		}, []string{"queue", "outcome"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "deeptrace_worker_tasks_active", Help: "Assembly tasks running now.",
		}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "deeptrace_worker_assembly_seconds", Help: "Time of one assembly run, by stage (fetch, assemble, write, total).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"stage"}),
		spansPerTrace: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "deeptrace_worker_spans_per_trace", Help: "Spans in each trace written.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		tracesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_worker_traces_written_total", Help: "Trace documents written (rewrites included).",
		}),
		spansFetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_worker_spans_fetched_total", Help: "Span documents read from the engine.",
		}),
		staleDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_worker_stale_traces_deleted_total", Help: "Traces of earlier runs deleted because a rerun no longer holds them (fragments completed by late spans).",
		}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_worker_invalid_traces_total", Help: "Assembled traces that failed validation and were not written (a bug).",
		}),
		links: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_worker_links_total", Help: "Parent links assembly made (tuple, tcpseq, local) or refused (two_parents, two_servers, cycle, time, horizon).",
		}, []string{"kind"}),
		otherTasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_worker_other_tasks_total", Help: "Rollup, alert evaluation and notification tasks handled, by type and outcome (done, failed, wait: retried because its data or lock was not ready).",
		}, []string{"type", "outcome"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.tasks, m.active, m.seconds, m.spansPerTrace, m.tracesWritten, m.spansFetched, m.staleDeleted, m.invalid, m.links, m.otherTasks}
}

func (m *metrics) observeStats(st assemble.Stats) {
	for k, v := range map[string]int{
		"tuple": st.TupleLinks, "tcpseq": st.TCPSeqLinks, "local": st.LocalLinks,
		"two_parents": st.PrunedTwoParents, "two_servers": st.PrunedTwoServers, "cycle": st.PrunedCycles,
		"time": st.PrunedTime, "horizon": st.Horizon,
	} {
		if v > 0 {
			m.links.WithLabelValues(k).Add(float64(v))
		}
	}
}

func (m *metrics) observe(r Result) {
	m.spansFetched.Add(float64(r.Fetched))
	m.seconds.WithLabelValues("fetch").Observe(r.FetchTook.Seconds())
	m.seconds.WithLabelValues("assemble").Observe(r.AssembleTook.Seconds())
	m.seconds.WithLabelValues("write").Observe(r.WriteT.Seconds())
	m.seconds.WithLabelValues("total").Observe(r.Took.Seconds())
}
