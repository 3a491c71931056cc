package main

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// PinProcess pins every thread of the process to one CPU; threads created
// later inherit the mask of the thread that creates them.
func PinProcess(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return err
		}
	}
	return nil
}
