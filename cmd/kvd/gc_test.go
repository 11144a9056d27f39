package main

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// TestSetGCPercent: the flag's value is applied unless GOGC is set in the
// environment and the flag was not given.
func TestSetGCPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	current := func() int { v := debug.SetGCPercent(-1); debug.SetGCPercent(v); return v }

	t.Setenv("GOGC", "")
	if p, err := setGCPercent(defaultGCPercent, false); err != nil || current() != defaultGCPercent || p != defaultGCPercent {
		t.Errorf("no GOGC, default: err %v, GC percent %d, want %d", err, current(), defaultGCPercent)
	}
	t.Setenv("GOGC", "200")
	debug.SetGCPercent(200) // what the runtime read at start
	if p, err := setGCPercent(defaultGCPercent, false); err != nil || current() != 200 || p != 200 {
		t.Errorf("GOGC=200, flag not given: err %v, GC percent %d, want 200", err, current())
	}
	if p, err := setGCPercent(70, true); err != nil || current() != 70 || p != 70 {
		t.Errorf("GOGC=200, --gc-percent 70: err %v, GC percent %d, want 70", err, current())
	}
	if _, err := setGCPercent(5, true); err == nil || current() != 70 {
		t.Errorf("--gc-percent 5: err %v, GC percent %d: want an error and no change", err, current())
	}
}

// TestGCPercentFor: a small live heap gets the percent that gives it the
// minimum headroom; a large one keeps the configured percent; off stays off.
func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		percent        int
		headroom, live uint64
		want           int
	}{
		{50, 64 << 20, 32 << 20, 200},  // 64 MiB over 32 MiB live
		{50, 64 << 20, 128 << 20, 50},  // 50% of 128 MiB is the headroom
		{50, 64 << 20, 1 << 30, 50},    // large: the percent
		{50, 0, 32 << 20, 50},          // no minimum
		{-1, 64 << 20, 32 << 20, -1},   // GC off
		{50, 64 << 20, 0, 100_000},     // nothing live yet: capped
		{300, 64 << 20, 64 << 20, 300}, // the percent already gives more
	} {
		if got := gcPercentFor(c.percent, c.headroom, c.live); got != c.want {
			t.Errorf("gcPercentFor(%d, %d, %d) = %d, want %d", c.percent, c.headroom, c.live, got, c.want)
		}
	}
}

// TestGCTunerFollowsTheLiveHeap: after a collection the tuner sets the
// target the live heap calls for: with a small heap and a minimum of 1 GiB
// of headroom, far above the configured 50; set back to 50 when the
// minimum is small.
func TestGCTunerFollowsTheLiveHeap(t *testing.T) {
	orig := debug.SetGCPercent(50)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	current := func() int { v := debug.SetGCPercent(-1); debug.SetGCPercent(v); return v }
	tu := startGCTuner(50, 1<<30)
	t.Cleanup(tu.stop)
	runtime.GC()
	if tu.target() <= 50 || current() != tu.target() {
		t.Fatalf("target %d, runtime's %d after a collection of a small heap with 1 GiB headroom, want well above 50", tu.target(), current())
	}
	tu.mu.Lock()
	tu.headroom = 1 // any heap gives more than a byte at 50%
	tu.mu.Unlock()
	tu.tune()
	if tu.target() != 50 || current() != 50 {
		t.Fatalf("target %d, runtime's %d with 1 byte of minimum headroom, want 50", tu.target(), current())
	}
}
