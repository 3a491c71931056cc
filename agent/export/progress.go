package export

import (
	"context"
	"sync"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// The agent's progress report (schemas.AgentProgress): the pipeline says
// up to when it has handed every span to Add (Progress); the exporter
// lowers that to the earliest start of a span it still holds, in memory
// or in the spool, and reports the result once the engine has had its
// refresh interval to make those spans searchable.

// pendingStarts counts the spans between Add and their outcome (written,
// refused, dropped, or in the spool, which keeps its own account) by
// start second.
type pendingStarts struct {
	mu  sync.Mutex
	sec map[int64]int
}

func (p *pendingStarts) add(startNs int64) {
	p.mu.Lock()
	if p.sec == nil {
		p.sec = map[int64]int{}
	}
	p.sec[startNs/1e9]++
	p.mu.Unlock()
}

func (p *pendingStarts) done(spans []schemas.Span) {
	p.mu.Lock()
	for i := range spans {
		k := spans[i].StartNs / 1e9
		if p.sec[k]--; p.sec[k] <= 0 {
			delete(p.sec, k)
		}
	}
	p.mu.Unlock()
}

// min returns the start of the earliest second with a span pending.
func (p *pendingStarts) min() (ns int64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.sec {
		if !ok || k*1e9 < ns {
			ns, ok = k*1e9, true
		}
	}
	return ns, ok
}

// Progress records that every span that started before watermarkNs (wall
// ns) has been handed to Add. It is how agent/pipeline reports.
func (e *Exporter) Progress(watermarkNs int64) {
	for {
		old := e.frontier.Load()
		if watermarkNs <= old || e.frontier.CompareAndSwap(old, watermarkNs) {
			return
		}
	}
}

// Watermark is the time before which every span this exporter was handed
// has been written (or refused, or dropped); ok is false until the
// pipeline first reported its progress.
func (e *Exporter) Watermark() (time.Time, bool) {
	w := e.frontier.Load()
	if w == 0 {
		return time.Time{}, false
	}
	if p, ok := e.pending.min(); ok && p < w {
		w = p
	}
	if e.spool != nil {
		if p, ok := e.spool.MinStart(); ok && p < w {
			w = p
		}
	}
	return time.Unix(0, w).UTC(), true
}

type progressSample struct {
	at, watermark time.Time
}

// reporter publishes the progress every ProgressInterval until ctx ends.
// A report carries the watermark as it was RefreshDelay earlier, when the
// spans it vouches for had been written at least that long: searchable.
func (e *Exporter) reporter(ctx context.Context) {
	if e.cfg.ProgressInterval < 0 {
		return
	}
	t := time.NewTicker(e.cfg.ProgressInterval / 4)
	defer t.Stop()
	var samples []progressSample
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UTC()
		if w, ok := e.Watermark(); ok {
			samples = append(samples, progressSample{at: now, watermark: w})
		}
		if now.Sub(last) < e.cfg.ProgressInterval {
			continue
		}
		k := -1
		for i, s := range samples {
			if now.Sub(s.at) >= e.cfg.RefreshDelay {
				k = i
			}
		}
		if k < 0 {
			continue
		}
		w := samples[k].watermark
		samples = samples[k+1:]
		last = now
		e.report(ctx, w, false)
	}
}

// report writes one progress report; the engine being away is not worth
// more than a debug line (the spans themselves are spooled and logged).
func (e *Exporter) report(ctx context.Context, w time.Time, stopped bool) {
	st := e.Stats()
	p := schemas.AgentProgress{
		Host: e.cfg.Host, Watermark: w, ReportedAt: time.Now().UTC(), StartedAt: e.startedAt,
		Stopped: stopped, Queued: int64(st.Queued), Spooled: st.SpoolSpans,
	}
	// Its own deadline: at Close the caller's may be spent on the spool.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := e.st.PutAgentProgress(ctx, p); err != nil {
		e.log.Debug("progress report not stored", "err", err)
		return
	}
	e.progressWM.Set(float64(w.UnixNano()) / 1e9)
}
