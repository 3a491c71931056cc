package export

import "github.com/prometheus/client_golang/prometheus"

// Collectors returns the exporter's Prometheus collectors, labelled with
// the host. New registers them with Config.Registerer when one is given.
func (e *Exporter) Collectors() []prometheus.Collector {
	labels := prometheus.Labels{"host": e.cfg.Host}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f)
	}
	cs := []prometheus.Collector{
		counter("deeptrace_export_spans_added_total", "Spans accepted by the exporter.", func() float64 { return float64(e.added.Load()) }),
		counter("deeptrace_export_spans_written_total", "Spans indexed by the engine (directly or from the spool).", func() float64 { return float64(e.written.Load()) }),
		counter("deeptrace_export_spans_rejected_total", "Spans the engine refused for what they are; not retried.", func() float64 { return float64(e.rejected.Load()) }),
		counter("deeptrace_export_spans_spooled_total", "Spans written to the on-disk spool.", func() float64 { return float64(e.spooled.Load()) }),
		counter("deeptrace_export_spans_replayed_total", "Spans indexed from the spool.", func() float64 { return float64(e.replayed.Load()) }),
		counter("deeptrace_export_bulk_requests_total", "Bulk exchanges with the engine.", func() float64 { return float64(e.requests.Load()) }),
		gauge("deeptrace_export_queue_spans", "Spans waiting in memory.", func() float64 { return float64(len(e.queue)) }),
		gauge("deeptrace_export_spool_bytes", "Bytes in the spool on disk (compressed).", func() float64 { b, _, _ := e.spoolSize(); return float64(b) }),
		gauge("deeptrace_export_spool_spans", "Spans in the spool.", func() float64 { _, n, _ := e.spoolSize(); return float64(n) }),
		gauge("deeptrace_export_engine_up", "1 while the engine takes writes, 0 while the exporter spools.", func() float64 {
			if e.down.Load() {
				return 0
			}
			return 1
		}),
		e.bulkSeconds,
		e.progressWM,
	}
	for _, r := range dropReasons {
		c := e.dropped[r]
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "deeptrace_export_spans_dropped_total", Help: "Spans lost, by reason.",
			ConstLabels: prometheus.Labels{"host": e.cfg.Host, "reason": r},
		}, func() float64 { return float64(c.Load()) }))
	}
	return cs
}

func (e *Exporter) spoolSize() (int64, int64, int) {
	if e.spool == nil {
		return 0, 0, 0
	}
	return e.spool.Size()
}
