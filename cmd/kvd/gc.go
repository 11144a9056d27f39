package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
)

// defaultGCPercent is kvd's garbage collector target (Go's GOGC). Go's
// default, 100, lets the heap grow to twice the live data between
// collections; nearly all of kvd's live heap is the state (keys, values,
// sessions), so that doubles the memory a node holds, and the runtime does
// not give the growth back to the OS once the writes stop. At 25 the heap
// grows by a quarter: with a million keys a member just loaded holds
// 524-577 MiB (1.81-1.99x the raw data) against 594-659 at 50; the
// servers' CPU per put while loading was 196-233 us against 175-221, the
// ranges overlapping (a collection marks only the items and tree nodes;
// keys and values hold no pointers). Below ~256 MiB of live data the
// headroom floor decides, not the percent.
// docs/performance.md "Memory and start-up".
const defaultGCPercent = 25

// defaultGCMinHeadroom is the least the heap may grow between collections
// (--gc-min-headroom). A percentage of a small state is a few megabytes:
// with 100,000 keys (~40 MiB live) and 50%, every 20 MiB of garbage
// (about a thousand puts) started a collection, and collecting took a
// fifth of a member's CPU under load. 64 MiB bounds what a small state
// costs in memory absolutely, as the percentage bounds a large one
// relatively: from about 256 MiB of live data up, the percentage decides.
const defaultGCMinHeadroom = 64 << 20

// setGCPercent applies --gc-percent and returns the target in force. The
// GOGC environment variable, which the Go runtime has already applied,
// wins unless the flag was given.
func setGCPercent(v int, given bool) (int, error) {
	if v != -1 && v < 10 {
		return 0, fmt.Errorf("--gc-percent: want at least 10, or -1 (off), got %d", v)
	}
	env := os.Getenv("GOGC")
	if given || env == "" {
		debug.SetGCPercent(v)
		return v, nil
	}
	if env == "off" {
		return -1, nil
	}
	if n, err := strconv.Atoi(env); err == nil {
		return n, nil
	}
	return 100, nil // what the runtime makes of a GOGC it cannot read
}

// gcPercentFor is the target that lets the heap grow by at least headroom
// over live bytes, and never by less than percent. Go's heap goal is
// live + (live + roots) x percent/100, where roots are the goroutine stacks
// and globals a collection scans; a target computed from the live heap
// alone overshoots when the roots are large beside it (with 2 MiB live and
// 3 MiB of stacks, a 64 MiB floor gave a 217 MiB goal).
func gcPercentFor(percent int, headroom, live, roots uint64) int {
	if percent < 0 || headroom == 0 {
		return percent
	}
	need := headroom * 100 / max(live+roots, 1)
	// Go's goal is never below 4 MiB x percent/100 either: keep that
	// minimum within the floor too (with 1 MiB live, 5,300% would set a
	// minimum heap of 212 MiB).
	need = min(need, (live+headroom)*100/goHeapMinimum)
	return max(percent, int(need))
}

// goHeapMinimum is the Go runtime's smallest heap goal at 100%; it scales
// with the percent.
const goHeapMinimum = 4 << 20

// gcTuner keeps the heap's headroom at least minHeadroom: after every
// collection (a finalizer on an object made for it runs once per cycle)
// it sets the target for the live heap that collection found.
type gcTuner struct {
	percent  int
	headroom uint64

	// live reads the live heap the last collection found (0: none yet)
	// and the roots it scanned (stacks and globals).
	live func() (heap, roots uint64)

	mu      sync.Mutex
	current int
	stopped bool
}

// startGCTuner starts tuning; percent is the target in force (-1: off,
// and then it does nothing), headroom 0 turns it off.
func startGCTuner(percent int, headroom uint64) *gcTuner {
	t := &gcTuner{percent: percent, headroom: headroom, current: percent, live: liveHeap}
	if percent < 0 || headroom == 0 {
		return t
	}
	t.arm()
	return t
}

// liveHeap is the live heap the last collection marked (0 before the
// first) and the roots it scanned.
func liveHeap() (heap, roots uint64) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}
	metrics.Read(s)
	v := make([]uint64, len(s))
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	return v[0], v[1] + v[2]
}

// gcSentinel is garbage as soon as it is made; its finalizer runs after
// the collection that finds it.
type gcSentinel struct {
	t *gcTuner
}

func (t *gcTuner) arm() {
	runtime.SetFinalizer(&gcSentinel{t: t}, func(s *gcSentinel) {
		if s.t.tune() {
			s.t.arm()
		}
	})
}

// stop ends the tuning after the next collection (tests).
func (t *gcTuner) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
}

// tune sets the target for the live heap the last collection measured,
// when it moved by more than a twentieth. It reports whether tuning goes
// on.
func (t *gcTuner) tune() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	live, roots := t.live()
	if live == 0 {
		// Before the first collection nothing has been measured: a target
		// for "nothing live" would put the first collection off by
		// gigabytes (Go's first goal is 4 MiB times the percent).
		return true
	}
	p := gcPercentFor(t.percent, t.headroom, live, roots)
	if d := p - t.current; d*20 > t.current || -d*20 > t.current {
		debug.SetGCPercent(p)
		t.current = p
	}
	return true
}

// target is the percent set last.
func (t *gcTuner) target() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.current
}
