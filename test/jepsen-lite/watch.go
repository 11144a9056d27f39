package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvdproject/kvd/client"
)

// ---------------------------------------------------------------------------
// Watch: writers put unique values to a few keys; one watcher per node
// (each starting on its own node, free to move) records its stream. The
// checker proves that every acknowledged write appears exactly once, in
// index order, in every watcher's stream after its start, and that no
// change appears for a write that never happened.

const (
	watchKeys     = 4
	watchProgress = 300 * time.Millisecond
)

func watchKey(rng *rand.Rand) string { return fmt.Sprintf("wt/%d", rng.IntN(watchKeys)) }

// WatchWriter puts unique values to the watched keys until ctx ends.
func WatchWriter(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	for n := 0; ctx.Err() == nil; n++ {
		e.throttle(ctx)
		key, v := watchKey(rng), fmt.Sprintf("w%d-%d", id, n)
		octx, cancel := opCtx(ctx)
		op := e.H.Invoke(&Op{Client: id, Workload: "watch", Type: "write", Key: key, Value: v})
		resp, err := c.Put(octx, []byte(key), []byte(v))
		cancel()
		if err != nil {
			e.H.Error(op, err)
			continue
		}
		op.Effect = resp.GetKv().GetModIndex()
		for cur := e.watchWritten.Load(); op.Effect > cur && !e.watchWritten.CompareAndSwap(cur, op.Effect); cur = e.watchWritten.Load() {
		}
		e.H.OK(op, resp.GetHeader())
	}
}

// Watchers are the recorders of one run; Stop ends them.
type Watchers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	pos    []atomic.Uint64 // each watcher's position: every change up to it delivered
}

// StartWatchers starts n watchers (ids from id), the i-th with node i's
// endpoint first, from after index from.
func StartWatchers(e *Env, n, id int, from uint64) *Watchers {
	ctx, cancel := context.WithCancel(context.Background())
	ws := &Watchers{cancel: cancel, pos: make([]atomic.Uint64, n)}
	for i := range n {
		eps := append(append([]string{}, e.Endpoints[i%len(e.Endpoints):]...), e.Endpoints[:i%len(e.Endpoints)]...)
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			ws.run(ctx, e, id+i, eps, from, &ws.pos[i])
		}()
	}
	return ws
}

// CaughtUp waits until every watcher has delivered every change up to
// index, or d passes.
func (ws *Watchers) CaughtUp(index uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		all := true
		for i := range ws.pos {
			all = all && ws.pos[i].Load() >= index
		}
		if all {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// Stop ends the watchers and waits for them.
func (ws *Watchers) Stop() {
	ws.cancel()
	ws.wg.Wait()
}

// run records one watcher's stream; a watch that ends with an error is
// started again after its position (a new segment of the stream).
func (ws *Watchers) run(ctx context.Context, e *Env, id int, eps []string, from uint64, pos *atomic.Uint64) {
	c, err := e.newClientOn(eps)
	if err != nil {
		return
	}
	defer c.Close()
	pos.Store(from)
	record := func(op *Op) {
		op.Client, op.Workload = id, "watch"
		e.H.OK(e.H.Invoke(op), nil)
	}
	for ctx.Err() == nil {
		start := pos.Load()
		record(&Op{Type: "watch-start", Index: start})
		for ev, err := range c.Watch(ctx, []byte("wt/"), client.WithPrefix(), client.FromIndex(start),
			client.WithProgressNotify(), client.WithProgressInterval(watchProgress)) {
			if err != nil {
				if ctx.Err() == nil {
					record(&Op{Type: "watch-end", Err: err.Error()})
				}
				break
			}
			op := &Op{Index: ev.Index, ServedBy: ev.ServedBy}
			switch ev.Kind {
			case client.EventChange:
				op.Type = "watch-change"
			case client.EventState:
				op.Type = "watch-state"
			case client.EventSnapshotEnd:
				op.Type = "watch-snapshot-end"
			case client.EventProgress:
				op.Type = "watch-progress"
			}
			if ch := ev.Change; ch != nil {
				op.Key, op.Value, op.Effect = string(ch.GetKey()), string(ch.GetKv().GetValue()), ch.GetKv().GetModIndex()
			}
			record(op)
			if ev.Kind != client.EventState {
				pos.Store(max(pos.Load(), ev.Index))
			}
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// watchSegment is one watch call's stream: the changes it must hold are
// those of the index ranges it covers: from its start to its last
// position, less the stretches a snapshot stood in for.
type watchSegment struct {
	watcher int
	start   uint64
	changes []*Op
	covered [][2]uint64 // (from, to]
}

func (s *watchSegment) covers(index uint64) bool {
	for _, r := range s.covered {
		if index > r[0] && index <= r[1] {
			return true
		}
	}
	return false
}

// CheckWatch checks the watch workload: every acknowledged write appears
// exactly once, in index order, in every watcher's stream that covers its
// index; every change delivered was made by a write that was attempted
// (not one that certainly failed), at the index its acknowledgement named;
// a snapshot holds, for each key, a value no older than the latest
// acknowledged write to it up to the snapshot's index.
func CheckWatch(ops []Op) *Verdict {
	v := newVerdict("watch")
	writes := map[[2]string]*Op{} // (key, value) -> the write that put it
	var acked []*Op
	byWatcher := map[int][]*Op{}
	for i := range ops {
		op := &ops[i]
		switch {
		case op.Workload != "watch":
		case op.Type == "write":
			writes[[2]string{op.Key, op.Value}] = op
			if op.Outcome == OK {
				acked = append(acked, op)
			}
		default:
			byWatcher[op.Client] = append(byWatcher[op.Client], op)
		}
	}
	ids := make([]int, 0, len(byWatcher))
	for id := range byWatcher {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	var segments []*watchSegment
	for _, id := range ids {
		var seg *watchSegment
		var open, last uint64 // the open range starts after open; every change up to last was delivered
		inSnapshot := false
		state := map[string]*Op{}
		closeRange := func() {
			if seg != nil && last > open {
				seg.covered = append(seg.covered, [2]uint64{open, last})
			}
		}
		seen := map[string]bool{}
		for _, op := range byWatcher[id] {
			if seg == nil && op.Type != "watch-start" {
				v.fail("watcher %d: %s before its stream started", id, op.Type)
				continue
			}
			switch op.Type {
			case "watch-start":
				closeRange()
				seg = &watchSegment{watcher: id, start: op.Index}
				segments = append(segments, seg)
				open, last = op.Index, op.Index
				v.Counts["streams"]++
			case "watch-change":
				v.Counts["changes"]++
				if op.Index < last {
					v.fail("watcher %d: change %s=%s at index %d after index %d was delivered: out of order", id, op.Key, op.Value, op.Index, last)
				}
				k := fmt.Sprintf("%d/%s", op.Index, op.Key)
				if seen[k] {
					v.fail("watcher %d: change %s=%s at index %d delivered twice", id, op.Key, op.Value, op.Index)
				}
				seen[k] = true
				if op.Index <= seg.start {
					v.fail("watcher %d: change at index %d, not after the stream's start %d", id, op.Index, seg.start)
				}
				last = max(last, op.Index)
				seg.changes = append(seg.changes, op)
				checkChangeMadeByWrite(v, id, op, writes)
			case "watch-progress":
				last = max(last, op.Index)
			case "watch-state", "watch-snapshot-end":
				if !inSnapshot {
					// A snapshot stands in for the changes after the
					// position: the covered range ends there.
					closeRange()
					inSnapshot, state = true, map[string]*Op{}
				}
				if op.Type == "watch-state" {
					state[op.Key] = op
					checkChangeMadeByWrite(v, id, op, writes)
					continue
				}
				v.Counts["snapshots"]++
				checkSnapshot(v, id, op.Index, state, acked)
				inSnapshot = false
				open, last = op.Index, max(last, op.Index)
			case "watch-end":
				v.note("watcher %d: a watch ended: %s", id, op.Err)
			}
		}
		closeRange()
	}
	// Completeness: each acknowledged write in every segment covering it.
	for _, seg := range segments {
		got := map[uint64]bool{}
		for _, ch := range seg.changes {
			got[ch.Index] = true
		}
		for _, w := range acked {
			if w.Effect == 0 || !seg.covers(w.Effect) {
				continue
			}
			v.Counts["checked"]++
			if !got[w.Effect] {
				v.fail("watcher %d (stream from %d): acknowledged write %s=%s at index %d is missing", seg.watcher, seg.start, w.Key, w.Value, w.Effect)
			}
		}
	}
	v.Counts["writes_acked"] = len(acked)
	if len(acked) > 0 && v.Counts["checked"] == 0 {
		v.fail("no acknowledged write fell in any watcher's stream: the watchers saw nothing")
	}
	return v
}

// checkChangeMadeByWrite: a change (or snapshot item) names a value some
// write put to that key, at the index its acknowledgement gave.
func checkChangeMadeByWrite(v *Verdict, id int, op *Op, writes map[[2]string]*Op) {
	w := writes[[2]string{op.Key, op.Value}]
	switch {
	case w == nil:
		v.fail("watcher %d: %s %s=%s at index %d: no write put that value", id, op.Type, op.Key, op.Value, op.Index)
	case w.Outcome == Fail:
		v.fail("watcher %d: %s %s=%s at index %d: its write certainly failed (%s)", id, op.Type, op.Key, op.Value, op.Index, w.Err)
	case w.Outcome == OK && w.Effect != 0 && w.Effect != op.Effect:
		v.fail("watcher %d: %s %s=%s says index %d, its write was acknowledged at %d", id, op.Type, op.Key, op.Value, op.Effect, w.Effect)
	}
}

// checkSnapshot: for each key, the snapshot's value is no older than the
// latest acknowledged write to it up to the snapshot's index.
func checkSnapshot(v *Verdict, id int, at uint64, state map[string]*Op, acked []*Op) {
	latest := map[string]uint64{}
	for _, w := range acked {
		if w.Effect != 0 && w.Effect <= at {
			latest[w.Key] = max(latest[w.Key], w.Effect)
		}
	}
	keys := make([]string, 0, len(latest))
	for k := range latest {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s := state[k]
		switch {
		case s == nil:
			v.fail("watcher %d: snapshot at %d lacks %s, acknowledged at %d", id, at, k, latest[k])
		case s.Effect < latest[k]:
			v.fail("watcher %d: snapshot at %d has %s from index %d, older than its write acknowledged at %d", id, at, k, s.Effect, latest[k])
		}
	}
}
