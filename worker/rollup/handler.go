package rollup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/jobs"
)

// ProcessTask runs one rollup task; Roller is an asynq.Handler.
func (r *Roller) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := ParsePayload(t.Payload())
	if err != nil {
		return fmt.Errorf("%w: %v", asynq.SkipRetry, err)
	}
	res, err := r.Run(ctx, p)
	if err != nil {
		return err
	}
	r.cfg.Logger.Debug("rollup", "minute", p.Minute, "shard", p.Shard, "spans", res.Spans, "docs", res.Docs, "stale", res.Stale)
	return nil
}

// Register adds the rollup handler to a worker's mux. The worker's asynq
// server must also serve jobs.QueueMetrics (jobs.Queues has it).
func Register(mux *asynq.ServeMux, r *Roller) {
	mux.Handle(jobs.TypeRollup, r)
}

// RetryDelay backs off quickly on a held lock, exponentially (up to a
// minute) otherwise; a worker can use it as its asynq RetryDelayFunc for
// rollup tasks.
func RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if errors.Is(err, ErrLocked) {
		return 2 * time.Second
	}
	return min(time.Second<<min(n, 6), time.Minute)
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
