package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// The watch hub.
//
// Apply hands each entry's events to Publish, which appends them to a
// bounded history and wakes the dispatcher; it never waits for a watcher.
// The dispatcher walks the new events in order and pushes each into the
// queue of every registered watcher it matches (an exact key, or one of the
// registered prefix lengths: a few map lookups per event, however many
// watchers there are). A watcher whose queue is full is cancelled with its
// position, from which its client resumes; so is every watcher when the
// node installs a snapshot. History keeps every event the dispatcher has
// not yet dispatched, even past its bounds.
//
// A watcher's position is (after, skip): it has every matching event of
// every entry up to after, and the first skip matching events of entry
// after+1 (one entry's events may be split across messages). A watcher
// starts by catching up from history without being registered, then
// registers under wmu: whatever history holds between its position and the
// dispatched index goes into its queue, and the dispatcher pushes the rest,
// so nothing is missed or sent twice. A position older than history starts
// with a snapshot of the watched items at one index instead (or fails with
// OUT_OF_RANGE when asked).
//
// Progress: while watchers exist, the hub asks the leader for a read index
// every ProgressInterval, waits until it has applied and dispatched that
// far, and records the index: a "vouch". Once per its progress interval a
// watcher that has returned every change up to the latest vouch reports it
// as PROGRESS (between changes too). A node cut off from the leader vouches for
// nothing, so its watchers fall silent and their clients move elsewhere.

// Defaults of the watch settings of Config.
const (
	DefaultWatchHistoryBytes     = 64 << 20
	DefaultWatchHistoryEvents    = 100_000
	DefaultWatchBuffer           = 4096
	DefaultWatchProgressInterval = 250 * time.Millisecond
	// DefaultWatchProgress is how often an idle stream gets a PROGRESS
	// message when the request does not say.
	DefaultWatchProgress = time.Second
)

// Limits of one message a watcher's Next returns.
const (
	watchBatchEvents = 1000
	watchBatchBytes  = 1 << 20
)

// WatchConfig configures a WatchHub; zero fields take the defaults.
type WatchConfig struct {
	HistoryBytes     int64         // bytes of events kept (estimated), default 64 MiB
	HistoryEvents    int           // events kept, default 100000
	Buffer           int           // events queued per watcher before it is cancelled, default 4096
	ProgressInterval time.Duration // how often the hub confirms it is up to date, default 250ms
	Logger           *slog.Logger
}

func (c WatchConfig) withDefaults() WatchConfig {
	if c.HistoryBytes == 0 {
		c.HistoryBytes = DefaultWatchHistoryBytes
	}
	if c.HistoryEvents == 0 {
		c.HistoryEvents = DefaultWatchHistoryEvents
	}
	if c.Buffer == 0 {
		c.Buffer = DefaultWatchBuffer
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = DefaultWatchProgressInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports the first negative setting.
func (c WatchConfig) Validate() error {
	switch {
	case c.HistoryBytes < 0:
		return fmt.Errorf("watch history bytes %d: must not be negative", c.HistoryBytes)
	case c.HistoryEvents < 0:
		return fmt.Errorf("watch history events %d: must not be negative", c.HistoryEvents)
	case c.Buffer < 0:
		return fmt.Errorf("watch buffer %d: must not be negative", c.Buffer)
	case c.ProgressInterval < 0:
		return fmt.Errorf("watch progress interval %v: must not be negative", c.ProgressInterval)
	}
	return nil
}

// ReadIndexFunc returns an index such that every entry committed when it
// was called is at or below it, once every state-machine entry up to it has
// been published to the hub (Node: ReadIndex, then WaitApplied).
type ReadIndexFunc func(ctx context.Context) (uint64, error)

// WatchHub keeps the history of one member's events and serves its
// watchers. Publish and Reset are called from the apply path; the rest from
// any goroutine.
type WatchHub struct {
	cfg       WatchConfig
	fsm       *fsm.FSM
	readIndex ReadIndexFunc
	log       *slog.Logger

	// History; guarded by mu.
	mu        sync.Mutex
	hist      []histEvent // hist[head:] are held, oldest first
	head      int
	nextSeq   uint64 // seq of the next event published
	bytes     int64
	compacted uint64 // a position with after >= compacted is served from history
	last      uint64 // highest index published
	// pinned is the seq of the first event not yet dispatched: history
	// never drops it (it may run over its bounds for as long as the
	// dispatcher is behind, which is never long: pushing never waits).
	pinned uint64

	kick chan struct{} // wakes the dispatcher (capacity 1)

	// Dispatch; guarded by wmu, which is taken before mu when both are.
	wmu        sync.Mutex
	dispSeq    uint64 // seq of the next event to dispatch
	reg        [4]registry
	all        map[*Watcher]struct{}
	dispatched atomic.Uint64 // every event up to it is in the queues of the registered watchers
	dispMu     sync.Mutex
	dispWake   chan struct{} // closed and replaced after each dispatch round

	watchers atomic.Int64  // open watchers (progress runs only while > 0)
	planted  atomic.Uint64 // counts pushes for the planted watch bugs (kvdbugs builds)

	vouchMu  sync.Mutex
	vouch    vouch
	vouchNew chan struct{} // closed and replaced at each vouch

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// histEvent is one event in history.
type histEvent struct {
	seq  uint64
	ev   fsm.Event
	size int64
}

func (e *histEvent) index() uint64 { return e.ev.Change.Index }

// vouch is one confirmation that every change up to index has been
// dispatched and that index was at least the leader's commit index when the
// round started.
type vouch struct {
	round uint64
	index uint64
}

// registry holds the registered watchers of one target.
type registry struct {
	exact  map[string]map[*Watcher]struct{}
	prefix map[string]map[*Watcher]struct{}
	lens   map[int]int // prefix lengths in use, with their counts
}

// NewWatchHub returns a hub over f and starts its dispatcher and progress
// loop; Close stops them. readIndex confirms progress (see ReadIndexFunc).
func NewWatchHub(cfg WatchConfig, f *fsm.FSM, readIndex ReadIndexFunc) *WatchHub {
	cfg = cfg.withDefaults()
	h := &WatchHub{
		cfg:       cfg,
		fsm:       f,
		readIndex: readIndex,
		log:       cfg.Logger,
		kick:      make(chan struct{}, 1),
		all:       map[*Watcher]struct{}{},
		dispWake:  make(chan struct{}),
		vouchNew:  make(chan struct{}),
	}
	for i := range h.reg {
		h.reg[i] = registry{exact: map[string]map[*Watcher]struct{}{}, prefix: map[string]map[*Watcher]struct{}{}, lens: map[int]int{}}
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.wg.Add(2)
	go func() { defer h.wg.Done(); h.dispatchLoop() }()
	go func() { defer h.wg.Done(); h.progressLoop() }()
	return h
}

// Close stops the hub's goroutines and cancels every watcher.
func (h *WatchHub) Close() {
	h.cancel()
	h.wg.Wait()
	h.wmu.Lock()
	for w := range h.all {
		h.cancelLocked(w, ErrStopped)
	}
	h.wmu.Unlock()
}

// eventSize estimates what an event holds in memory: its messages, key and
// values (an old value is usually also the previous event's new value, so
// this counts some bytes twice: the budget errs on the safe side).
func eventSize(e fsm.Event) int64 {
	c := e.Change
	n := 160 + 2*len(c.Key) + len(c.GetKv().GetValue()) + len(c.GetCache().GetValue()) +
		32*len(c.GetLock().GetWaiters()) + 8*len(c.GetCache().GetWaiters()) + 16*len(c.GetSession().GetLocks())
	if e.Prev != nil {
		n += 64 + len(e.Prev.Value)
	}
	return int64(n)
}

// Publish appends the events of the entry at index to history (none: the
// entry changed nothing, but the index still moves) and wakes the
// dispatcher. It never blocks on a watcher.
func (h *WatchHub) Publish(index uint64, evs []fsm.Event) {
	h.mu.Lock()
	for _, e := range evs {
		h.hist = append(h.hist, histEvent{seq: h.nextSeq, ev: e, size: eventSize(e)})
		h.nextSeq++
		h.bytes += h.hist[len(h.hist)-1].size
	}
	h.last = max(h.last, index)
	h.evictLocked()
	h.mu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// evictLocked drops the oldest events until history is within its bounds.
func (h *WatchHub) evictLocked() {
	for h.head < len(h.hist) && (len(h.hist)-h.head > h.cfg.HistoryEvents || h.bytes > h.cfg.HistoryBytes) {
		e := &h.hist[h.head]
		if e.seq >= h.pinned {
			break
		}
		h.compacted = max(h.compacted, e.index())
		h.bytes -= e.size
		*e = histEvent{}
		h.head++
	}
	if h.head > 0 && h.head >= len(h.hist)/2 {
		n := copy(h.hist, h.hist[h.head:])
		clear(h.hist[n:])
		h.hist = h.hist[:n]
		h.head = 0
	}
}

// Reset empties history after the state was replaced by a snapshot at
// index: the changes up to it are not known. Every watcher is cancelled;
// resuming gives it a snapshot (or OUT_OF_RANGE).
func (h *WatchHub) Reset(index uint64) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.mu.Lock()
	clear(h.hist)
	h.hist, h.head, h.bytes = h.hist[:0], 0, 0
	h.compacted, h.last = max(h.compacted, index), max(h.last, index)
	h.dispSeq, h.pinned = h.nextSeq, h.nextSeq
	h.mu.Unlock()
	h.setDispatched(index)
	for w := range h.all {
		h.cancelLocked(w, errWatchReset)
	}
}

var (
	errWatchReset = &Error{Code: kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED,
		Msg: "watch cancelled: the node installed a snapshot and lost its history; resume to continue"}
	errWatchSlow = &Error{Code: kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED,
		Msg: "watch cancelled: the stream fell behind its buffer; resume to continue"}
	errWatchLagged = &Error{Code: kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED,
		Msg: "watch cancelled: the node's history moved past the stream's position while it caught up; resume to continue"}
)

// HistoryRange is what history holds: a watch can continue after any index
// from oldest on; last is the newest index published.
func (h *WatchHub) HistoryRange() (oldest, last uint64, events int, bytes int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.compacted, h.last, len(h.hist) - h.head, h.bytes
}

// Watchers is the number of open watchers.
func (h *WatchHub) Watchers() int { return int(h.watchers.Load()) }

// firstAfterLocked is the place in hist of the first event of an entry
// after after; len(hist) when none is held.
func (h *WatchHub) firstAfterLocked(after uint64) int {
	held := h.hist[h.head:]
	return h.head + sort.Search(len(held), func(i int) bool { return held[i].index() > after })
}

// --- dispatch ---

func (h *WatchHub) dispatchLoop() {
	for {
		select {
		case <-h.kick:
		case <-h.ctx.Done():
			return
		}
		for h.dispatchSome() {
		}
	}
}

// dispatchSome dispatches up to one batch of new events; it reports
// whether more are waiting.
func (h *WatchHub) dispatchSome() bool {
	const maxRound = 4096
	h.wmu.Lock()
	defer h.wmu.Unlock()

	h.mu.Lock()
	firstSeq := h.nextSeq - uint64(len(h.hist)-h.head)
	from := h.dispSeq // never evicted: pinned
	i := h.head + int(from-firstSeq)
	// Whole entries only, so that "dispatched" is an index: every event
	// up to it has been delivered, none after it.
	n := min(len(h.hist)-i, maxRound)
	for n > 0 && i+n < len(h.hist) && h.hist[i+n].index() == h.hist[i+n-1].index() {
		n++
	}
	batch := make([]fsm.Event, n)
	for k := range n {
		batch[k] = h.hist[i+k].ev
	}
	more := i+n < len(h.hist)
	done := h.last
	if more {
		done = h.hist[i+n-1].index()
	}
	h.mu.Unlock()

	for _, e := range batch {
		h.deliverLocked(e)
	}
	h.dispSeq = from + uint64(n)
	h.mu.Lock()
	h.pinned = h.dispSeq
	h.evictLocked()
	h.mu.Unlock()
	h.setDispatched(done)
	return more
}

func (h *WatchHub) setDispatched(index uint64) {
	for {
		cur := h.dispatched.Load()
		if index <= cur || h.dispatched.CompareAndSwap(cur, index) {
			break
		}
	}
	h.dispMu.Lock()
	close(h.dispWake)
	h.dispWake = make(chan struct{})
	h.dispMu.Unlock()
}

// waitDispatched waits until every event up to index has been dispatched.
func (h *WatchHub) waitDispatched(ctx context.Context, index uint64) error {
	for {
		h.dispMu.Lock()
		ch := h.dispWake
		h.dispMu.Unlock()
		if h.dispatched.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// deliverLocked pushes e to every registered watcher it matches (wmu held).
func (h *WatchHub) deliverLocked(e fsm.Event) {
	t := e.Change.Target
	if int(t) >= len(h.reg) {
		return
	}
	r := &h.reg[t]
	key := e.Change.Key
	for w := range r.exact[string(key)] {
		w.push(e)
	}
	for l := range r.lens {
		if l > len(key) {
			continue
		}
		for w := range r.prefix[string(key[:l])] {
			w.push(e)
		}
	}
}

func (h *WatchHub) registerLocked(w *Watcher) {
	r := &h.reg[w.spec.Target]
	m := r.exact
	if w.spec.Prefix {
		m = r.prefix
	}
	k := string(w.spec.Key)
	set := m[k]
	if set == nil {
		set = map[*Watcher]struct{}{}
		m[k] = set
	}
	set[w] = struct{}{}
	if w.spec.Prefix {
		r.lens[len(k)]++
	}
	w.registered = true
}

func (h *WatchHub) unregisterLocked(w *Watcher) {
	if !w.registered {
		return
	}
	w.registered = false
	r := &h.reg[w.spec.Target]
	m := r.exact
	if w.spec.Prefix {
		m = r.prefix
	}
	k := string(w.spec.Key)
	if set := m[k]; set != nil {
		delete(set, w)
		if len(set) == 0 {
			delete(m, k)
		}
	}
	if w.spec.Prefix {
		if r.lens[len(k)]--; r.lens[len(k)] <= 0 {
			delete(r.lens, len(k))
		}
	}
}

// cancelLocked ends w with err (wmu held).
func (h *WatchHub) cancelLocked(w *Watcher, err error) {
	h.unregisterLocked(w)
	w.fail(err)
}

// --- progress ---

// progressLoop vouches for this node's progress every ProgressInterval
// while anyone watches.
func (h *WatchHub) progressLoop() {
	t := time.NewTicker(h.cfg.ProgressInterval)
	defer t.Stop()
	var round uint64
	for {
		select {
		case <-t.C:
		case <-h.ctx.Done():
			return
		}
		if h.watchers.Load() == 0 || h.readIndex == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(h.ctx, 4*h.cfg.ProgressInterval+time.Second)
		idx, err := h.readIndex(ctx)
		if err == nil {
			h.mu.Lock()
			last := h.last
			h.mu.Unlock()
			err = h.waitDispatched(ctx, last)
			idx = max(idx, last)
		}
		cancel()
		if err != nil {
			continue // no leader, or cut off: vouch for nothing
		}
		round++
		h.vouchMu.Lock()
		h.vouch = vouch{round: round, index: idx}
		close(h.vouchNew)
		h.vouchNew = make(chan struct{})
		h.vouchMu.Unlock()
	}
}

func (h *WatchHub) lastVouch() vouch {
	h.vouchMu.Lock()
	defer h.vouchMu.Unlock()
	return h.vouch
}

// --- watchers ---

// WatchSpec is what a watcher watches and where it starts.
type WatchSpec struct {
	Target kvpb.WatchTarget
	Key    []byte
	Prefix bool
	// FromNow starts after a read index; otherwise after (After, Skip).
	FromNow bool
	After   uint64
	Skip    uint32
	// Types: only these event types (empty: all).
	Types []kvpb.EventType
	// OutOfRangeError: a position older than history fails with
	// OUT_OF_RANGE instead of starting with a snapshot.
	OutOfRangeError bool
	// Progress: how often an idle watcher reports progress (0: the
	// default; never more often than the hub's ProgressInterval).
	Progress time.Duration
}

// Watcher is one watch on a hub. Next and Close are called by one
// goroutine (the stream's).
type Watcher struct {
	h     *WatchHub
	spec  WatchSpec
	types map[kvpb.EventType]bool
	start uint64
	every time.Duration

	// Position of what Next has returned.
	after uint64
	skip  uint32

	live      bool // registered: the dispatcher fills the queue
	snapshot  bool // a snapshot is being sent
	snapIndex uint64
	snapItems []*kvpb.WatchEvent
	snapDone  bool // SNAPSHOT_END sent

	lastRound    uint64    // the vouch round last reported
	lastProgress time.Time // when Next last returned PROGRESS (or the watch began)
	progressTime *time.Timer

	// Filled by the dispatcher; guarded by qmu.
	qmu        sync.Mutex
	q          []fsm.Event
	dropAfter  uint64 // the dispatcher drops what is not after (dropAfter, dropSkip)
	dropSkip   uint32
	dropped    uint32
	holdAll    bool // registered before the snapshot's index was known: queue everything
	err        error
	notify     chan struct{} // capacity 1
	registered bool          // guarded by the hub's wmu
	held       *fsm.Event    // planted "watch-reorder-event" (wmu)
	closed     bool          // Close was called (the Next goroutine's)
}

// Watch opens a watcher. From now, it asks for a read index first (errors:
// NOT_LEADER when no leader confirmed it, or ctx's). A position older than
// history starts with a snapshot, or is OUT_OF_RANGE with
// spec.OutOfRangeError (Error.Limit: the oldest position history serves).
func (h *WatchHub) Watch(ctx context.Context, spec WatchSpec) (*Watcher, error) {
	if int(spec.Target) >= len(h.reg) || spec.Target < 0 {
		return nil, Invalid("target", 0, fmt.Sprintf("target: unknown value %d", spec.Target))
	}
	w := &Watcher{h: h, spec: spec, notify: make(chan struct{}, 1), every: spec.Progress}
	if w.every <= 0 {
		w.every = DefaultWatchProgress
	}
	w.every = max(w.every, h.cfg.ProgressInterval)
	if len(spec.Types) > 0 {
		w.types = map[kvpb.EventType]bool{}
		for _, t := range spec.Types {
			w.types[t] = true
		}
	}
	if spec.FromNow {
		if h.readIndex == nil {
			return nil, errNotLeader
		}
		idx, err := h.readIndex(ctx)
		if err != nil {
			return nil, err
		}
		spec.After, spec.Skip = idx, 0
	}
	w.after, w.skip, w.start = spec.After, spec.Skip, spec.After

	h.mu.Lock()
	compacted := h.compacted
	h.mu.Unlock()
	if spec.After < compacted && spec.OutOfRangeError {
		return nil, &Error{Code: kvpb.ErrorCode_ERROR_CODE_OUT_OF_RANGE, Field: "after_index", Limit: int64(compacted),
			Msg: fmt.Sprintf("after_index: %d is older than this node's watch history, which continues after %d at the oldest", spec.After, compacted)}
	}
	h.wmu.Lock()
	h.all[w] = struct{}{} // from here on Close must be called
	h.wmu.Unlock()
	if spec.After < compacted {
		h.startSnapshot(w)
	}
	h.watchers.Add(1)
	w.lastProgress = time.Now()
	return w, nil
}

// startSnapshot registers w so that it queues everything dispatched from
// now on, then reads the watched items at one index and from then on keeps
// only the changes after it.
func (h *WatchHub) startSnapshot(w *Watcher) {
	w.snapshot = true
	w.qmu.Lock()
	w.holdAll = true
	w.qmu.Unlock()
	h.wmu.Lock()
	h.registerLocked(w)
	h.wmu.Unlock()
	w.live = true

	ws := h.fsm.WatchState(w.spec.Target, w.spec.Key, w.spec.Prefix)
	w.snapIndex, w.snapItems = ws.Index, ws.Events

	// Everything dispatched since registration is queued; the changes up
	// to the snapshot's index are in it already.
	w.qmu.Lock()
	keep := w.q[:0]
	for _, e := range w.q {
		if e.Change.Index > ws.Index {
			keep = append(keep, e)
		}
	}
	clear(w.q[len(keep):])
	w.q = keep
	w.holdAll, w.dropAfter, w.dropSkip = false, ws.Index, 0
	w.qmu.Unlock()
}

// Start is the index the watcher continues after (from now: the read
// index), and whether it begins with a snapshot.
func (w *Watcher) Start() (after uint64, snapshot bool) { return w.start, w.snapshot }

// Position is what the watcher has returned so far: every matching change
// up to after, and skip changes of entry after+1.
func (w *Watcher) Position() (after uint64, skip uint32) { return w.after, w.skip }

// wants reports whether w wants e's type (its key was matched by the
// registry).
func (w *Watcher) wants(e fsm.Event) bool {
	return w.types == nil || w.types[e.Change.Type]
}

// push queues e for w (dispatcher, wmu held). A full queue cancels w.
func (w *Watcher) push(e fsm.Event) {
	if !w.wants(e) {
		return
	}
	if bug("watch-drop-event") && w.h.planted.Add(1)%151 == 0 {
		return // planted: a change lost on its way to one watcher
	}
	if bug("watch-reorder-event") {
		// Planted: now and then a change is held back and delivered after
		// the next one.
		if w.held == nil && w.h.planted.Add(1)%101 == 0 {
			w.held = &e
			return
		}
		if held := w.held; held != nil {
			w.held = nil
			w.push(e)
			e = *held
		}
	}
	w.qmu.Lock()
	if w.err != nil {
		w.qmu.Unlock()
		return
	}
	if !w.holdAll {
		idx := e.Change.Index
		if idx <= w.dropAfter {
			w.qmu.Unlock()
			return
		}
		if idx == w.dropAfter+1 && w.dropped < w.dropSkip {
			w.dropped++
			w.qmu.Unlock()
			return
		}
	}
	if len(w.q) >= w.h.cfg.Buffer {
		w.qmu.Unlock()
		w.h.cancelLocked(w, errWatchSlow)
		return
	}
	w.q = append(w.q, e)
	w.qmu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// fail ends w with err (the first error wins).
func (w *Watcher) fail(err error) {
	w.qmu.Lock()
	if w.err == nil {
		w.err = err
		clear(w.q)
		w.q = nil
	}
	w.qmu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Close ends the watcher.
func (w *Watcher) Close() {
	if w.closed {
		return
	}
	w.closed = true
	w.h.wmu.Lock()
	w.h.unregisterLocked(w)
	delete(w.h.all, w)
	w.h.wmu.Unlock()
	w.fail(errClosed)
	w.h.watchers.Add(-1)
}

var errClosed = errors.New("node: watcher closed")

// WatchBatch is one message for the stream.
type WatchBatch struct {
	Kind kvpb.WatchMessageKind
	// Index: SNAPSHOT and SNAPSHOT_END the snapshot's; EVENTS and PROGRESS
	// every change up to it has been returned.
	Index  uint64
	Events []fsm.Event        // EVENTS
	State  []*kvpb.WatchEvent // SNAPSHOT
}

// advance moves the position past one returned event of entry idx.
func (w *Watcher) advance(idx uint64) {
	if idx == w.after+1 {
		w.skip++
	} else if idx > w.after+1 {
		w.after, w.skip = idx-1, 1
	}
}

// complete moves the position to (index, 0) when every change of the
// entries up to index has been returned.
func (w *Watcher) complete(index uint64) {
	if index > w.after {
		w.after, w.skip = index, 0
	}
}

// Next returns the next message: snapshot parts, changes, or (once per
// progress interval, after a new vouch) progress. It waits until
// there is one, or ctx ends (ctx's error), or the watcher is cancelled
// (*Error WATCH_CANCELED: resume after Position) or the hub stops
// (ErrStopped).
func (w *Watcher) Next(ctx context.Context) (WatchBatch, error) {
	if w.snapshot && !w.snapDone {
		return w.nextSnapshot(), nil
	}
	for {
		if !w.live {
			b, ok, err := w.catchUp()
			if err != nil || ok {
				return b, err
			}
			continue // registered now
		}
		// Progress first: a busy stream gets it too (between changes).
		if b, ok := w.progress(); ok {
			return b, nil
		}
		if b, ok, err := w.fromQueue(); err != nil || ok {
			return b, err
		}
		wait := w.every - time.Since(w.lastProgress)
		if wait <= 0 {
			wait = w.every // due but no new vouch yet: look again later
		}
		if w.progressTime == nil {
			w.progressTime = time.NewTimer(wait)
		} else {
			w.progressTime.Reset(wait)
		}
		select {
		case <-w.notify:
		case <-w.progressTime.C:
		case <-ctx.Done():
			w.progressTime.Stop()
			return WatchBatch{}, ctx.Err()
		}
		w.progressTime.Stop()
	}
}

func (w *Watcher) nextSnapshot() WatchBatch {
	if len(w.snapItems) == 0 {
		w.snapDone = true
		w.after, w.skip = w.snapIndex, 0
		return WatchBatch{Kind: kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT_END, Index: w.snapIndex}
	}
	n, size := 0, 0
	for n < len(w.snapItems) && n < watchBatchEvents && size < watchBatchBytes {
		size += int(eventSize(fsm.Event{Change: w.snapItems[n]}))
		n++
	}
	part := w.snapItems[:n:n]
	w.snapItems = w.snapItems[n:]
	return WatchBatch{Kind: kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT, Index: w.snapIndex, State: part}
}

// catchUp returns changes from history after the position, without being
// registered; once history has nothing more that the dispatcher has
// passed, it registers (ok false: call again).
func (w *Watcher) catchUp() (WatchBatch, bool, error) {
	h := w.h
	if err := w.failed(); err != nil {
		return WatchBatch{}, false, err
	}
	d := h.dispatched.Load()
	evs, complete, err := w.readHistory(d, watchBatchEvents, watchBatchBytes)
	if err != nil {
		return WatchBatch{}, false, err
	}
	if len(evs) > 0 {
		return w.events(evs, complete), true, nil
	}
	// Register: what history holds between the position and what the
	// dispatcher has passed goes into the queue (at most a buffer's worth,
	// or keep catching up first); the dispatcher pushes what follows.
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := w.failed(); err != nil {
		return WatchBatch{}, false, err
	}
	d = h.dispatched.Load()
	evs, _, err = w.readHistory(d, h.cfg.Buffer+1, 1<<62)
	if err != nil {
		return WatchBatch{}, false, err
	}
	if len(evs) > h.cfg.Buffer {
		return WatchBatch{}, false, nil // fell behind again meanwhile
	}
	w.qmu.Lock()
	w.q = append(w.q, evs...)
	// The dispatcher delivers whole entries after d. A position beyond d
	// (a read index this node has not reached) drops what it has seen.
	w.dropAfter, w.dropSkip, w.dropped = d, 0, 0
	if w.after >= d {
		w.dropAfter, w.dropSkip = w.after, w.skip
	}
	w.qmu.Unlock()
	h.registerLocked(w)
	w.live = true
	return WatchBatch{}, false, nil
}

// readHistory returns up to limit changes (and about maxBytes) matching w
// after its position, of entries up to through, and the index up to which every change has
// then been returned. It fails with WATCH_CANCELED when history no longer
// holds the position.
func (w *Watcher) readHistory(through uint64, limit int, maxBytes int64) ([]fsm.Event, uint64, error) {
	h := w.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.after < h.compacted {
		return nil, 0, errWatchLagged
	}
	var out []fsm.Event
	seen := uint32(0)
	size := int64(0)
	i := h.firstAfterLocked(w.after)
	for ; i < len(h.hist) && len(out) < limit && size < maxBytes; i++ {
		e := h.hist[i].ev
		idx := e.Change.Index
		if idx > through {
			break
		}
		if !w.matches(e) {
			continue
		}
		if idx == w.after+1 && seen < w.skip {
			seen++
			continue
		}
		out = append(out, e)
		size += h.hist[i].size
	}
	// complete: every change up to this index is in out (or before).
	complete := through
	if i < len(h.hist) && h.hist[i].index() <= through {
		complete = h.hist[i].index() - 1
	}
	return out, complete, nil
}

// matches reports whether e is on w's key or prefix and of a wanted type.
func (w *Watcher) matches(e fsm.Event) bool {
	c := e.Change
	if c.Target != w.spec.Target || !w.wants(e) {
		return false
	}
	if w.spec.Prefix {
		return strings.HasPrefix(string(c.Key), string(w.spec.Key))
	}
	return string(c.Key) == string(w.spec.Key)
}

// events makes an EVENTS batch and moves the position past it; every
// change up to complete has been returned.
func (w *Watcher) events(evs []fsm.Event, complete uint64) WatchBatch {
	for _, e := range evs {
		w.advance(e.Change.Index)
	}
	w.complete(complete)
	return WatchBatch{Kind: kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS, Index: w.after, Events: evs}
}

func (w *Watcher) failed() error {
	w.qmu.Lock()
	defer w.qmu.Unlock()
	return w.err
}

// fromQueue returns the queued changes (up to a batch).
func (w *Watcher) fromQueue() (WatchBatch, bool, error) {
	// Read before the queue: every change up to d is queued by now.
	d := w.h.dispatched.Load()
	w.qmu.Lock()
	if w.err != nil {
		err := w.err
		w.qmu.Unlock()
		return WatchBatch{}, false, err
	}
	if len(w.q) == 0 {
		w.qmu.Unlock()
		return WatchBatch{}, false, nil
	}
	n, size := 0, int64(0)
	for n < len(w.q) && n < watchBatchEvents && size < watchBatchBytes {
		size += eventSize(w.q[n])
		n++
	}
	evs := make([]fsm.Event, n)
	copy(evs, w.q)
	rest := copy(w.q, w.q[n:])
	clear(w.q[rest:])
	w.q = w.q[:rest]
	var next uint64 // index of the next queued event, 0 if none
	if rest > 0 {
		next = w.q[0].Change.Index
	}
	w.qmu.Unlock()
	// Every change before the next queued one is returned now; with
	// nothing queued, every change up to d.
	complete := max(d, evs[n-1].Change.Index-1)
	if next > 0 {
		complete = next - 1
	}
	return w.events(evs, complete), true, nil
}

// progress returns a PROGRESS batch when one is due: its interval has
// passed since the last one, a vouch newer than that exists, and every
// change up to the vouch's index has been returned (nothing at or below it
// is still queued).
func (w *Watcher) progress() (WatchBatch, bool) {
	if time.Since(w.lastProgress) < w.every {
		return WatchBatch{}, false
	}
	v := w.h.lastVouch()
	if v.round == 0 || v.round == w.lastRound {
		return WatchBatch{}, false
	}
	// The vouch was made once every change up to v.index was queued (it
	// was read before the queue), so a queue empty of them means all have
	// been returned.
	w.qmu.Lock()
	behind := len(w.q) > 0 && w.q[0].Change.Index <= v.index
	failed := w.err != nil // a cancelled watcher's queue was dropped
	w.qmu.Unlock()
	if behind || failed {
		return WatchBatch{}, false
	}
	w.lastRound = v.round
	w.complete(v.index)
	w.lastProgress = time.Now()
	return WatchBatch{Kind: kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_PROGRESS, Index: w.after}, true
}
