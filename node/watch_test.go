package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/proto/kvpb"
)

const hubT0 = int64(1_700_000_000_000_000_000)

// hubLog applies commands to an fsm and publishes their events to a hub,
// the way the fsm adapter does.
type hubLog struct {
	t     testing.TB
	f     *fsm.FSM
	h     *WatchHub
	mu    sync.Mutex
	index uint64
	// readOK switches the hub's read index on and off (a node cut off
	// from the leader).
	readOK atomic.Bool
}

func newHubLog(t testing.TB, cfg WatchConfig) *hubLog {
	l := &hubLog{t: t, f: fsm.New()}
	l.readOK.Store(true)
	l.h = NewWatchHub(cfg, l.f, func(context.Context) (uint64, error) {
		if !l.readOK.Load() {
			return 0, errNotLeader
		}
		return l.f.AppliedIndex(), nil
	})
	t.Cleanup(l.h.Close)
	return l
}

func (l *hubLog) apply(cmd *kvpb.Command) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.index++
	cmd.Stamp = hubT0 + int64(l.index)*int64(time.Millisecond)
	data, err := proto.Marshal(cmd)
	if err != nil {
		l.t.Fatal(err)
	}
	_, evs := l.f.ApplyEvents(l.index, data)
	l.h.Publish(l.index, evs)
	return l.index
}

func (l *hubLog) put(key, value string) uint64 {
	return l.apply(&kvpb.Command{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte(key), Value: []byte(value)}}})
}

func (l *hubLog) cacheSet(key string) uint64 {
	return l.apply(&kvpb.Command{Op: &kvpb.Command_CacheSet{CacheSet: &kvpb.CacheSetRequest{Key: []byte(key), Value: []byte("v"), TtlMs: 60000}}})
}

func (l *hubLog) invalidatePrefix(prefix string) uint64 {
	return l.apply(&kvpb.Command{Op: &kvpb.Command_Invalidate{Invalidate: &kvpb.InvalidateRequest{Key: []byte(prefix), Prefix: true}}})
}

// streamLog reads a watcher and records what it got.
type streamLog struct {
	// deadline bounds the whole of a test's reads (set on first use), so
	// that a loop waiting for changes that never come ends.
	deadline time.Time
	changes  []*kvpb.WatchEvent
	state    []*kvpb.WatchEvent
	snapEnd  uint64
	progress []uint64
	index    uint64 // the last message's index
}

// next reads one message (failing the test after a while).
func (c *streamLog) next(t testing.TB, w *Watcher) (WatchBatch, error) {
	t.Helper()
	if c.deadline.IsZero() {
		c.deadline = time.Now().Add(60 * time.Second)
	}
	if time.Now().After(c.deadline) {
		t.Fatalf("still reading after 60s: %d changes, %d progress messages so far", len(c.changes), len(c.progress))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := w.Next(ctx)
	if err != nil {
		return b, err
	}
	switch b.Kind {
	case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS:
		for _, e := range b.Events {
			c.changes = append(c.changes, e.Change)
		}
	case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT:
		c.state = append(c.state, b.State...)
	case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT_END:
		c.snapEnd = b.Index
	case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_PROGRESS:
		c.progress = append(c.progress, b.Index)
	}
	if b.Index < c.index {
		t.Fatalf("message %v index %d went back from %d", b.Kind, b.Index, c.index)
	}
	c.index = b.Index
	return b, nil
}

// until reads until n changes have arrived.
func (c *streamLog) until(t testing.TB, w *Watcher, n int) {
	t.Helper()
	for len(c.changes) < n {
		if _, err := c.next(t, w); err != nil {
			t.Fatalf("Next after %d of %d changes: %v", len(c.changes), n, err)
		}
	}
}

func values(evs []*kvpb.WatchEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, fmt.Sprintf("%d:%s=%s", e.Index, e.Key, e.GetKv().GetValue()))
	}
	return out
}

func watch(t testing.TB, h *WatchHub, spec WatchSpec) *Watcher {
	t.Helper()
	w, err := h.Watch(context.Background(), spec)
	if err != nil {
		t.Fatalf("Watch(%+v) = %v", spec, err)
	}
	t.Cleanup(w.Close)
	return w
}

func TestWatchLiveAndResume(t *testing.T) {
	l := newHubLog(t, WatchConfig{})
	l.put("a/1", "x") // before the watch: not seen from now
	w := watch(t, l.h, WatchSpec{Key: []byte("a/"), Prefix: true, FromNow: true})
	if after, snap := w.Start(); after != 1 || snap {
		t.Fatalf("Start() = %d, %v; want after 1, no snapshot", after, snap)
	}
	l.put("b/1", "no")
	i2 := l.put("a/2", "y")
	l.put("a/1", "z")
	var c streamLog
	c.until(t, w, 2)
	if got, want := values(c.changes), []string{fmt.Sprintf("%d:a/2=y", i2), fmt.Sprintf("%d:a/1=z", i2+1)}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("changes = %v, want %v", got, want)
	}

	// Resume after the first of them: exactly the second, then live.
	w2 := watch(t, l.h, WatchSpec{Key: []byte("a/"), Prefix: true, After: i2})
	var c2 streamLog
	c2.until(t, w2, 1)
	l.put("a/3", "live")
	c2.until(t, w2, 2)
	if got := values(c2.changes); len(got) != 2 || got[0] != fmt.Sprintf("%d:a/1=z", i2+1) || got[1] != fmt.Sprintf("%d:a/3=live", i2+2) {
		t.Fatalf("resumed changes = %v", got)
	}
}

// TestWatchResumeWithinAnEntry: an invalidation of a prefix is one entry
// with many events; a stream cut part way through it resumes with skip.
func TestWatchResumeWithinAnEntry(t *testing.T) {
	l := newHubLog(t, WatchConfig{})
	for i := range 5 {
		l.cacheSet(fmt.Sprintf("p/%d", i))
	}
	start := l.f.AppliedIndex()
	inv := l.invalidatePrefix("p/")
	l.cacheSet("p/9")
	spec := WatchSpec{Target: kvpb.WatchTarget_WATCH_TARGET_CACHE, Key: []byte("p/"), Prefix: true}
	for skip := uint32(0); skip <= 5; skip++ {
		spec.After, spec.Skip = start, skip
		w := watch(t, l.h, spec)
		var c streamLog
		c.until(t, w, int(5-skip)+1)
		var got []string
		for _, e := range c.changes {
			got = append(got, fmt.Sprintf("%d %v %s", e.Index, e.Type, e.Key))
		}
		var want []string
		for i := int(skip); i < 5; i++ {
			want = append(want, fmt.Sprintf("%d EVENT_TYPE_CACHE_INVALIDATE p/%d", inv, i))
		}
		want = append(want, fmt.Sprintf("%d EVENT_TYPE_CACHE_STORE p/9", inv+1))
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("skip %d: got %v, want %v", skip, got, want)
		}
	}
}

// TestWatchCatchUpToLiveNoGapNoDuplicate: a watcher far behind catches up
// from history while entries keep coming, then goes live; every change
// arrives exactly once, in order.
func TestWatchCatchUpToLiveNoGapNoDuplicate(t *testing.T) {
	l := newHubLog(t, WatchConfig{Buffer: 64})
	for i := range 500 {
		l.put("k", fmt.Sprint(i))
	}
	w := watch(t, l.h, WatchSpec{Key: []byte("k"), After: 0})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 500; i < 1500; i++ {
			l.put("k", fmt.Sprint(i))
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	// A watcher that falls behind its buffer is cancelled; it resumes
	// from its position, as the client does.
	var c streamLog
	resumes := 0
	for len(c.changes) < 1500 {
		_, err := c.next(t, w)
		var ke *Error
		if errors.As(err, &ke) && ke.Code == kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED && resumes < 100 {
			after, skip := w.Position()
			w = watch(t, l.h, WatchSpec{Key: []byte("k"), After: after, Skip: skip})
			resumes++
			continue
		}
		if err != nil {
			t.Fatalf("Next after %d changes: %v", len(c.changes), err)
		}
	}
	<-done
	t.Logf("%d resumes", resumes)
	for i, e := range c.changes {
		if got := string(e.Kv.Value); got != fmt.Sprint(i) {
			t.Fatalf("change %d has value %q, want %q (a gap or a duplicate)", i, got, fmt.Sprint(i))
		}
	}
}

func TestWatchOlderThanHistory(t *testing.T) {
	l := newHubLog(t, WatchConfig{HistoryEvents: 10})
	for i := range 30 {
		l.put(fmt.Sprintf("c/%d", i%4), fmt.Sprint(i))
	}
	if err := l.h.waitDispatched(context.Background(), 30); err != nil {
		t.Fatal(err)
	}
	oldest, last, n, _ := l.h.HistoryRange()
	if n != 10 || oldest != 20 || last != 30 {
		t.Fatalf("HistoryRange() = oldest %d last %d events %d; want 20, 30, 10", oldest, last, n)
	}

	// OUT_OF_RANGE names the oldest index history can continue after.
	_, err := l.h.Watch(context.Background(), WatchSpec{Key: []byte("c/"), Prefix: true, After: 5, OutOfRangeError: true})
	var ke *Error
	if !errors.As(err, &ke) || ke.Code != kvpb.ErrorCode_ERROR_CODE_OUT_OF_RANGE || ke.Limit != 20 || ke.Field != "after_index" {
		t.Fatalf("Watch(after 5, out of range error) = %v, want OUT_OF_RANGE with limit 20", err)
	}
	l.h.wmu.Lock()
	kept := len(l.h.all)
	l.h.wmu.Unlock()
	if kept != 0 || l.h.Watchers() != 0 {
		t.Errorf("a refused watch left %d watchers behind (Watchers() = %d)", kept, l.h.Watchers())
	}
	// At the edge history still serves it.
	if w := watch(t, l.h, WatchSpec{Key: []byte("c/"), Prefix: true, After: 20}); func() bool { _, s := w.Start(); return s }() {
		t.Errorf("Watch(after 20) starts with a snapshot; history holds everything after 20")
	}

	// Otherwise: a snapshot of the watched keys at one index, then live.
	w := watch(t, l.h, WatchSpec{Key: []byte("c/"), Prefix: true, After: 5})
	if _, snap := w.Start(); !snap {
		t.Fatalf("Watch(after 5) does not start with a snapshot")
	}
	var c streamLog
	for c.snapEnd == 0 {
		if _, err := c.next(t, w); err != nil {
			t.Fatal(err)
		}
	}
	if c.snapEnd != 30 || len(c.state) != 4 || len(c.changes) != 0 {
		t.Fatalf("snapshot end %d with %d items and %d changes; want 30, 4 keys, no change", c.snapEnd, len(c.state), len(c.changes))
	}
	for _, e := range c.state {
		if e.Type != kvpb.EventType_EVENT_TYPE_STATE || e.Index != 30 {
			t.Errorf("snapshot item %s: %v at %d, want STATE at 30", e.Key, e.Type, e.Index)
		}
	}
	if got := string(c.state[3].Kv.Value); got != "27" {
		t.Errorf("snapshot c/3 = %q, want 27", got)
	}
	i := l.put("c/0", "live")
	c.until(t, w, 1)
	if e := c.changes[0]; e.Index != i || string(e.Kv.Value) != "live" {
		t.Errorf("after the snapshot: %v, want the put at %d", e, i)
	}
}

// TestWatchSnapshotWhileWriting: changes applied while the snapshot is
// taken are either in it or after it, never both nor neither.
func TestWatchSnapshotWhileWriting(t *testing.T) {
	l := newHubLog(t, WatchConfig{HistoryEvents: 500})
	for i := range 600 {
		l.put("s", fmt.Sprint(i))
	}
	if err := l.h.waitDispatched(context.Background(), l.f.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 600; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			l.put("s", fmt.Sprint(i))
			if i%20 == 0 {
				time.Sleep(100 * time.Microsecond) // history must not outrun the dispatcher
			}
		}
	}()
	for range 20 {
		w := watch(t, l.h, WatchSpec{Key: []byte("s"), After: 0})
		if _, snap := w.Start(); !snap {
			t.Fatalf("a watch after 0 with history past 100 does not start with a snapshot")
		}
		var c streamLog
		for c.snapEnd == 0 {
			if _, err := c.next(t, w); err != nil {
				t.Fatal(err)
			}
		}
		base := 0
		fmt.Sscan(string(c.state[0].Kv.Value), &base)
		c.until(t, w, 3)
		for k, e := range c.changes[:3] {
			if want := fmt.Sprint(base + k + 1); string(e.Kv.Value) != want {
				t.Fatalf("after a snapshot holding %d: change %d = %s, want %s", base, k, e.Kv.Value, want)
			}
		}
		w.Close()
	}
	close(stop)
	wg.Wait()
}

func TestWatchSlowConsumerIsCancelled(t *testing.T) {
	l := newHubLog(t, WatchConfig{Buffer: 8})
	w := watch(t, l.h, WatchSpec{Key: []byte("k"), FromNow: true})
	var c streamLog
	l.put("k", "0")
	c.until(t, w, 1)
	// The first change may have come from history: the watcher registers
	// with the dispatcher (goes live) on a Next that finds history drained.
	for i := 0; !isLive(l.h, w); i++ {
		if i == 100 {
			t.Fatal("watcher not live after 100 reads")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		b, err := w.Next(ctx)
		cancel()
		if err == nil && len(b.Events) > 0 {
			t.Fatalf("unexpected changes %v", b.Events)
		}
	}
	var last uint64
	for i := 1; i <= 20; i++ {
		last = l.put("k", fmt.Sprint(i))
	}
	// Nobody reads until the dispatcher has pushed all 20 changes: a reader
	// racing the dispatcher could keep the queue short and never fall behind.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.h.waitDispatched(ctx, last); err != nil {
		t.Fatalf("dispatcher did not pass index %d: %v", last, err)
	}
	// It fell behind by more than its buffer: cancelled, with what it was
	// given so far as the position to resume from.
	var err error
	for err == nil {
		_, err = c.next(t, w)
	}
	var ke *Error
	if !errors.As(err, &ke) || ke.Code != kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED {
		t.Fatalf("Next of a watcher behind its buffer = %v, want WATCH_CANCELED", err)
	}
	after, skip := w.Position()
	w2 := watch(t, l.h, WatchSpec{Key: []byte("k"), After: after, Skip: skip})
	c.until(t, w2, 21)
	for i, e := range c.changes {
		if string(e.Kv.Value) != fmt.Sprint(i) {
			t.Fatalf("change %d = %s across the cancel and resume; want %d", i, e.Kv.Value, i)
		}
	}
}

func isLive(h *WatchHub, w *Watcher) bool {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	return w.live
}

func TestWatchProgress(t *testing.T) {
	l := newHubLog(t, WatchConfig{ProgressInterval: 10 * time.Millisecond})
	w := watch(t, l.h, WatchSpec{Key: []byte("idle"), FromNow: true, Progress: 20 * time.Millisecond})
	last := l.put("other", "x")
	var c streamLog
	for len(c.progress) == 0 || c.progress[len(c.progress)-1] < last {
		if _, err := c.next(t, w); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.changes) != 0 {
		t.Errorf("changes %v on a key nobody wrote", values(c.changes))
	}
	// Cut off from the leader: no more progress.
	l.readOK.Store(false)
	time.Sleep(50 * time.Millisecond) // let a round in flight finish
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	for {
		b, err := w.Next(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil || b.Kind == kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_PROGRESS && b.Index > last {
			t.Fatalf("Next while cut off = %v %v; want nothing", b, err)
		}
	}
}

func TestWatchResetCancels(t *testing.T) {
	l := newHubLog(t, WatchConfig{})
	w := watch(t, l.h, WatchSpec{Key: []byte("k"), FromNow: true})
	l.h.Reset(100)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := w.Next(ctx)
	var ke *Error
	if !errors.As(err, &ke) || ke.Code != kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED {
		t.Fatalf("Next after Reset = %v, want WATCH_CANCELED", err)
	}
	if oldest, _, _, _ := l.h.HistoryRange(); oldest != 100 {
		t.Errorf("oldest after Reset(100) = %d", oldest)
	}
}

func TestWatchTypesAndTargets(t *testing.T) {
	l := newHubLog(t, WatchConfig{})
	w := watch(t, l.h, WatchSpec{Target: kvpb.WatchTarget_WATCH_TARGET_CACHE, Key: []byte(""), Prefix: true, FromNow: true,
		Types: []kvpb.EventType{kvpb.EventType_EVENT_TYPE_CACHE_INVALIDATE}})
	l.put("x", "key, not cache")
	l.cacheSet("a")
	inv := l.invalidatePrefix("")
	var c streamLog
	c.until(t, w, 1)
	if e := c.changes[0]; e.Type != kvpb.EventType_EVENT_TYPE_CACHE_INVALIDATE || e.Index != inv {
		t.Errorf("got %v, want only the invalidation at %d", e, inv)
	}
	if _, err := l.h.Watch(context.Background(), WatchSpec{Target: 9}); err == nil {
		t.Errorf("Watch(target 9) = nil error")
	}
}

// TestWatchManyWatchers runs watchers on exact keys and prefixes while
// entries are applied concurrently (meaningful under -race).
func TestWatchManyWatchers(t *testing.T) {
	l := newHubLog(t, WatchConfig{})
	const keys, perKey = 20, 50
	var wg sync.WaitGroup
	errs := make(chan error, 2*keys)
	for k := range keys {
		for _, prefix := range []bool{false, true} {
			key := fmt.Sprintf("m/%02d", k)
			if prefix {
				key = fmt.Sprintf("m/%d", k/10) // m/0 and m/1: ten keys each
			}
			w := watch(t, l.h, WatchSpec{Key: []byte(key), Prefix: prefix, After: 0})
			want := perKey
			if prefix {
				want = perKey * 10
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				n := 0
				for n < want {
					b, err := w.Next(ctx)
					if err != nil {
						errs <- fmt.Errorf("watch %s: %d of %d: %w", key, n, want, err)
						return
					}
					n += len(b.Events)
				}
			}()
		}
	}
	for i := range perKey {
		for k := range keys {
			l.put(fmt.Sprintf("m/%02d", k), fmt.Sprint(i))
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := l.h.Watchers(); n != 2*keys {
		t.Errorf("Watchers() = %d, want %d", n, 2*keys)
	}
}
