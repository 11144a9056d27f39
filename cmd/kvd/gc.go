package main

import (
	"fmt"
	"os"
	"runtime/debug"
)

// defaultGCPercent is kvd's garbage collector target (Go's GOGC). Go's
// default, 100, lets the heap grow to twice the live data between
// collections; nearly all of kvd's live heap is the state (keys, values,
// sessions), so that doubles the memory a node holds. At 50 the heap grows
// by half: a collection marks only the state's items and tree nodes (keys
// and values hold no pointers), so collecting twice as often costs little
// CPU (docs/performance.md "Memory and start-up").
const defaultGCPercent = 50

// setGCPercent applies --gc-percent. The GOGC environment variable, which
// the Go runtime has already applied, wins unless the flag was given.
func setGCPercent(v int, given bool) error {
	if v != -1 && v < 10 {
		return fmt.Errorf("--gc-percent: want at least 10, or -1 (off), got %d", v)
	}
	if given || os.Getenv("GOGC") == "" {
		debug.SetGCPercent(v)
	}
	return nil
}
