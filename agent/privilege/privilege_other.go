//go:build !linux

package privilege

import "errors"

// Result is what a drop changed; nothing outside Linux.
type Result struct {
	Kept []string
}

// DropForAgent is only implemented on Linux, where the agent runs.
func DropForAgent(bool, *Identity) (Result, error) {
	return Result{}, errors.New("privilege: capabilities are Linux's")
}
