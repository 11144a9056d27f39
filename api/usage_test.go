package api

import (
	"testing"
	"time"
)

func TestProcessUsage(t *testing.T) {
	before := processCPUMicros()
	for end := time.Now().Add(20 * time.Millisecond); time.Now().Before(end); {
	}
	if after := processCPUMicros(); after <= before {
		t.Errorf("CPU micros %d after spinning 20ms, %d before: want growth", after, before)
	}
	if rss := processRSSBytes(); rss < 1<<20 {
		t.Errorf("RSS %d bytes, want at least 1 MiB for a Go test process", rss)
	}
}
