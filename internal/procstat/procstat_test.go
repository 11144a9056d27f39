package procstat

import (
	"testing"
	"time"
)

func TestProcessUsage(t *testing.T) {
	before := CPUMicros()
	for end := time.Now().Add(20 * time.Millisecond); time.Now().Before(end); {
	}
	if after := CPUMicros(); after <= before {
		t.Errorf("CPU micros %d after spinning 20ms, %d before: want growth", after, before)
	}
	if rss := RSSBytes(); rss < 1<<20 {
		t.Errorf("RSS %d bytes, want at least 1 MiB for a Go test process", rss)
	}
}
