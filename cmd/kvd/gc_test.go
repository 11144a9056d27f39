package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
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

// TestGCPercentFor: a small heap gets the percent that gives it the minimum
// headroom over the live heap and the roots (Go's goal counts both); a large
// one keeps the configured percent; off stays off.
func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		percent               int
		headroom, live, roots uint64
		want                  int
	}{
		{50, 64 << 20, 32 << 20, 0, 200},       // 64 MiB over 32 MiB live
		{50, 64 << 20, 2 << 20, 30 << 20, 200}, // roots count: 64 MiB over 32 MiB
		{50, 64 << 20, 128 << 20, 0, 50},       // 50% of 128 MiB is the headroom
		{50, 64 << 20, 1 << 30, 1 << 20, 50},   // large: the percent
		{50, 0, 32 << 20, 0, 50},               // no minimum
		{-1, 64 << 20, 32 << 20, 0, -1},        // GC off
		{50, 64 << 20, 1 << 20, 0, 1625},       // Go's 4 MiB minimum x percent stays within 1 + 64 MiB
		{50, 64 << 20, 1, 0, 1600},             // nothing live: the same
		{300, 64 << 20, 64 << 20, 0, 300},      // the percent already gives more
	} {
		if got := gcPercentFor(c.percent, c.headroom, c.live, c.roots); got != c.want {
			t.Errorf("gcPercentFor(%d, %d, %d, %d) = %d, want %d", c.percent, c.headroom, c.live, c.roots, got, c.want)
		}
		// Go's goal, live + (live + roots) x p/100, is at most the floor
		// above live (or what the percent gives).
		if p := gcPercentFor(c.percent, c.headroom, c.live, c.roots); p > c.percent && c.live > 1 {
			if growth := (c.live + c.roots) * uint64(p) / 100; growth > c.headroom+c.headroom/100 {
				t.Errorf("gcPercentFor(%d, %d, %d, %d) = %d: the heap may grow by %d, over the floor %d", c.percent, c.headroom, c.live, c.roots, p, growth, c.headroom)
			}
		}
	}
}

// TestGCTunerFollowsTheLiveHeap: the tuner sets the target the live heap
// calls for, only once a collection has measured it, and only when it
// moved by more than a twentieth.
func TestGCTunerFollowsTheLiveHeap(t *testing.T) {
	orig := debug.SetGCPercent(50)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	current := func() int { v := debug.SetGCPercent(-1); debug.SetGCPercent(v); return v }
	var live uint64
	tu := &gcTuner{percent: 50, headroom: 64 << 20, current: 50, live: func() (uint64, uint64) { return live, 0 }}
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 50},         // nothing measured yet: no change
		{32 << 20, 200}, // small: the headroom decides
		{33 << 20, 200}, // moved by less than a twentieth: kept
		{1 << 30, 50},   // large: the percent
		{16 << 20, 400}, // small again
	} {
		live = c.live
		tu.tune()
		if tu.target() != c.want || current() != c.want {
			t.Fatalf("live %d: target %d, runtime's %d, want %d", c.live, tu.target(), current(), c.want)
		}
	}
}

// TestGCTunerRunsAfterCollections: started for real with a 64 MiB floor, the
// tuner sets a target after a collection, and the runtime's heap goal then
// lets the heap grow by about the floor, not more (Go's goal also counts the
// roots and a minimum heap that scales with the percent).
func TestGCTunerRunsAfterCollections(t *testing.T) {
	orig := debug.SetGCPercent(50)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	const floor = 64 << 20
	tu := startGCTuner(50, floor)
	t.Cleanup(tu.stop)
	for deadline := time.Now().Add(5 * time.Second); tu.target() <= 50; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("target still %d 5 s after collections began", tu.target())
		}
		runtime.GC() // the finalizer runs after it, on its own goroutine
	}
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	goal, live := s[0].Value.Uint64(), s[1].Value.Uint64()
	if goal < live+floor/2 || goal > live+floor+floor/10 {
		t.Fatalf("heap goal %d MiB over %d MiB live at %d%%, want about the 64 MiB floor", (goal-live)>>20, live>>20, tu.target())
	}
}
