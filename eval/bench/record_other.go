//go:build !(linux && amd64)

package bench

import (
	"errors"

	"github.com/deeptrace/deeptrace/eval/capfile"
)

// Recording is a capture running into a file until Stop.
type Recording struct{}

// StartRecording needs the eBPF capture (linux/amd64).
func StartRecording(path string, meta capfile.Meta) (*Recording, error) {
	return nil, errors.New("bench: capture needs linux/amd64")
}

// Summary says what the capture counted.
func (r *Recording) Summary() string { return "" }

// Stop ends the capture.
func (r *Recording) Stop() error { return nil }
