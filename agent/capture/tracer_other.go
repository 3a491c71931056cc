//go:build !(linux && amd64)

package capture

import (
	"context"
	"fmt"
	"runtime"

	"github.com/deeptrace/deeptrace/agent/event"
)

// Tracer is unavailable on this platform: the programs are built for
// linux/amd64.
type Tracer struct{}

var errPlatform = fmt.Errorf("%w: built for linux/amd64, running on %s/%s", ErrUnavailable, runtime.GOOS, runtime.GOARCH)

// Open fails: see Tracer.
func Open(cfg Config) (*Tracer, error) { return nil, errPlatform }

// Run fails: see Tracer.
func Run(ctx context.Context, cfg Config, out chan<- event.Event) error { return errPlatform }

// Run fails: see Tracer.
func (t *Tracer) Run(ctx context.Context, out chan<- event.Event, goOut chan<- event.GoEvent) error {
	return errPlatform
}

// Frontier knows nothing: see Tracer.
func (t *Tracer) Frontier() (monoNs, sent uint64, ok bool) { return 0, 0, false }

// Close does nothing.
func (t *Tracer) Close() error { return nil }

// TracePID fails: see Tracer.
func (t *Tracer) TracePID(pid int) error { return errPlatform }

// UntracePID fails: see Tracer.
func (t *Tracer) UntracePID(pid int) error { return errPlatform }

// DenyPID fails: see Tracer.
func (t *Tracer) DenyPID(pid int) error { return errPlatform }

// SetComms fails: see Tracer.
func (t *Tracer) SetComms(names ...string) error { return errPlatform }

// SetCgroups fails: see Tracer.
func (t *Tracer) SetCgroups(ids ...uint64) error { return errPlatform }

// SetPorts fails: see Tracer.
func (t *Tracer) SetPorts(ports ...uint16) error { return errPlatform }

// SetNetNS fails: see Tracer.
func (t *Tracer) SetNetNS(inodes ...uint32) error { return errPlatform }
