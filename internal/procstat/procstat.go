// Package procstat reads this process's own resource use: what a kvd
// reports in Cluster.Status and what kvctl bench counts for itself.
package procstat

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// CPUMicros is the CPU time (user + system) this process has used.
func CPUMicros() uint64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return uint64(ru.Utime.Nano()+ru.Stime.Nano()) / 1000
}

// RSSBytes is this process's resident set size now, from
// /proc/self/statm (0 where there is no such file).
func RSSBytes() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}
