package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// WatchOption is an optional setting of Watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	target     kvpb.WatchTarget
	prefix     bool
	from       *uint64
	prev       bool
	progress   bool
	outOfRange bool
	types      []kvpb.EventType
	every      time.Duration
}

// WithPrefix watches every key (lock name, cache key) that starts with the
// key given to Watch; an empty key with WithPrefix watches all of them.
func WithPrefix() WatchOption { return func(o *watchOptions) { o.prefix = true } }

// FromIndex continues after index n: the first change delivered is the
// first one an entry after n made. Without it a watch starts from now: at
// an index at least as new as every write acknowledged before Watch was
// called. When the member no longer holds history that old, the watch
// starts with a snapshot (EventState items, then EventSnapshotEnd) unless
// WithOutOfRangeError.
func FromIndex(n uint64) WatchOption { return func(o *watchOptions) { o.from = &n } }

// WithPrevKV sends each key change with the key as it was before
// (Change.PrevKv; unset when the key did not exist).
func WithPrevKV() WatchOption { return func(o *watchOptions) { o.prev = true } }

// WithProgressNotify yields EventProgress about once per progress interval
// (between changes too): every change up to its Index has been delivered,
// and the member confirmed with the leader that it was up to date.
func WithProgressNotify() WatchOption { return func(o *watchOptions) { o.progress = true } }

// WithProgressInterval sets how often a watch hears from its member when
// nothing changes (default 1s). The client moves to another member after three intervals
// without a word (plus a second), so this also bounds how long a partitioned
// member can hold a watch.
func WithProgressInterval(d time.Duration) WatchOption { return func(o *watchOptions) { o.every = d } }

// WithOutOfRangeError makes FromIndex older than the member's history an
// error (ErrOutOfRange; Error.Limit is the oldest index it can continue
// after) instead of a snapshot.
func WithOutOfRangeError() WatchOption { return func(o *watchOptions) { o.outOfRange = true } }

// WithEventTypes delivers only changes of these types (snapshot items are
// always delivered).
func WithEventTypes(types ...kvpb.EventType) WatchOption {
	return func(o *watchOptions) { o.types = append(o.types, types...) }
}

// OnLocks watches lock names; OnCache cache keys; OnSessions session ids in
// decimal. The default is KV keys.
func OnLocks() WatchOption {
	return func(o *watchOptions) { o.target = kvpb.WatchTarget_WATCH_TARGET_LOCKS }
}
func OnCache() WatchOption {
	return func(o *watchOptions) { o.target = kvpb.WatchTarget_WATCH_TARGET_CACHE }
}
func OnSessions() WatchOption {
	return func(o *watchOptions) { o.target = kvpb.WatchTarget_WATCH_TARGET_SESSIONS }
}

// EventKind says what a watch delivered.
type EventKind uint8

const (
	// EventChange is a change an applied entry made (Change).
	EventChange EventKind = iota + 1
	// EventState is an item of a snapshot: what exists at Index (Change,
	// of type EVENT_TYPE_STATE). A watch resumed from before the member's
	// history starts with these.
	EventState
	// EventSnapshotEnd ends a snapshot: the changes after Index follow.
	EventSnapshotEnd
	// EventProgress (WithProgressNotify): every change up to Index has
	// been delivered.
	EventProgress
)

func (k EventKind) String() string {
	switch k {
	case EventChange:
		return "change"
	case EventState:
		return "state"
	case EventSnapshotEnd:
		return "snapshot-end"
	case EventProgress:
		return "progress"
	}
	return "?"
}

// Event is one item of a watch.
type Event struct {
	Kind EventKind
	// Index: the change's entry (EventChange), the snapshot's index
	// (EventState, EventSnapshotEnd), or the index up to which every change
	// has been delivered (EventProgress).
	Index uint64
	// Change is the change or the snapshot item; nil otherwise. Shared:
	// do not modify it.
	Change *kvpb.WatchEvent
	// ServedBy names the member that sent it.
	ServedBy string
	// Header is the header of the message that carried it: the member's
	// applied index and log time when it sent it.
	Header *kvpb.ResponseHeader
}

// Watch watches key (a lock name with OnLocks, a cache key with OnCache,
// a session id with OnSessions; WithPrefix for all that start with it) and
// yields what changes, in index order, until ctx ends or the caller stops.
//
//	for ev, err := range c.Watch(ctx, []byte("config/"), client.WithPrefix()) {
//		if err != nil { ... } // the watch has ended
//		...
//	}
//
// Any member serves it. When the member dies, is cut off from the leader
// (it sends nothing for three progress intervals), stops, or cancels a
// stream that fell behind, the client reconnects to another member (with
// a backoff) and resumes after the last change it delivered: the caller
// sees no gap and no duplicate. If the new member no longer holds history
// that old, the watch goes on with a snapshot (EventState items and
// EventSnapshotEnd) and then live changes.
//
// The last item yielded has a non-nil error: ctx's, ErrClosed, or one that
// retrying cannot fix (ErrInvalidArgument, ErrOutOfRange with
// WithOutOfRangeError, a permission error), or ErrUnavailable when, with
// Config.UnreachableTimeout, no endpoint accepted a connection before any
// member was reached. It blocks only while the caller
// is not consuming: a caller slower than the changes for long is cancelled
// by its member and resumed, which costs a reconnect, not a change.
func (c *Client) Watch(ctx context.Context, key []byte, opts ...WatchOption) iter.Seq2[Event, error] {
	o := watchOptions{every: time.Second}
	for _, f := range opts {
		f(&o)
	}
	return func(yield func(Event, error) bool) {
		w := &watchRun{c: c, key: append([]byte(nil), key...), o: o}
		if o.from != nil {
			w.known, w.after = true, *o.from
		}
		w.run(ctx, yield)
	}
}

// watchRun is one Watch call: its position survives reconnects.
type watchRun struct {
	c   *Client
	key []byte
	o   watchOptions

	// Position: every change up to after delivered, and skip changes of
	// entry after+1. Unknown (from now) until the first CREATED.
	known bool
	after uint64
	skip  uint32

	snap []*kvpb.WatchEvent // the snapshot being received
	next int                // round-robin over the endpoints
}

// errStalled: the member sent nothing for three progress intervals.
var errStalled = errors.New("kvd: watch: the member sent nothing in time (cut off from the leader?)")

func (w *watchRun) run(ctx context.Context, yield func(Event, error) bool) {
	var delay time.Duration
	failed := ""
	refused := false // the last attempt's token was refused
	// Until a member is reached, Config.UnreachableTimeout ends a watch
	// none of whose endpoints accepts a connection (as it ends a request);
	// once one was, the watch rides out any outage until ctx ends.
	began, reached, noConn := time.Now(), false, map[string]bool{}
	for {
		if err := ctx.Err(); err != nil {
			yield(Event{}, err)
			return
		}
		if w.c.isClosed() {
			yield(Event{}, ErrClosed)
			return
		}
		addr := w.pick(failed)
		progressed, connected, stopped, err := w.stream(ctx, addr, yield)
		if stopped {
			return
		}
		reached = reached || connected
		if !reached && w.c.cfg.UnreachableTimeout > 0 && ctx.Err() == nil {
			noConn[addr] = true
			if len(noConn) >= len(w.c.endpoints) && time.Since(began) >= w.c.cfg.UnreachableTimeout {
				yield(Event{}, unreachable(w.c.endpoints, err))
				return
			}
		}
		if ctx.Err() != nil {
			yield(Event{}, ctx.Err())
			return
		}
		if w.c.isClosed() {
			yield(Event{}, ErrClosed)
			return
		}
		if tokenRefused(err) && (!refused || progressed) {
			// The stream interceptor dropped the token: the next attempt
			// signs in again (an open stream outlives its token).
			refused = true
			continue
		}
		refused = false
		if final := watchFinal(err); final != nil {
			yield(Event{}, final)
			return
		}
		w.c.log.Debug("kvd watch: reconnecting", "endpoint", addr, "err", err)
		failed = addr
		if progressed {
			delay = 0
		}
		if codeOf(watchErr(err)) == kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED && progressed {
			continue // resume at once: the stream was only too slow
		}
		if !sleepBackoff(ctx, &delay) {
			yield(Event{}, ctx.Err())
			return
		}
	}
}

// pick returns the endpoint of the next attempt: round-robin over the
// endpoints, skipping the one that just failed when there is another.
func (w *watchRun) pick(failed string) string {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	eps := w.c.endpoints
	if w.next == 0 {
		// Spread watches over the members from the start.
		w.next = w.c.next
		w.c.next++
	}
	for range eps {
		addr := eps[w.next%len(eps)]
		w.next++
		if addr != failed || len(eps) == 1 {
			return addr
		}
	}
	return eps[0]
}

func (w *watchRun) request() *kvpb.WatchRequest {
	req := &kvpb.WatchRequest{
		Target:          w.o.target,
		Key:             w.key,
		Prefix:          w.o.prefix,
		PrevKv:          w.o.prev,
		OutOfRangeError: w.o.outOfRange,
		Types:           w.o.types,
		ProgressMs:      ms(w.o.every),
	}
	if w.known {
		after := w.after
		req.AfterIndex, req.Skip = &after, w.skip
	}
	return req
}

// maxWatchMessage bounds one received watch message (a batch of changes
// with old values can exceed gRPC's default 4 MiB).
const maxWatchMessage = 256 << 20

// watchStreamsPerConn bounds the watch streams one connection carries: a
// member serves a bounded number of concurrent calls per connection
// (kvd --max-concurrent-streams, 256 by default), and a call past it waits.
const watchStreamsPerConn = 100

// watchConn returns a connection to addr for one more watch stream, and
// the func that gives its slot back. Watch streams never share a
// connection with requests, so a process's many watches (a near-cache, a
// watch per held lock) cannot hold up its keepalives and writes; more
// connections are made as the streams grow.
func (c *Client) watchConn(addr string) (*grpc.ClientConn, func(), error) {
	c.mu.Lock()
	if c.watchStreams == nil {
		c.watchStreams = map[string]int{}
	}
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("%s#watch%d", addr, i); c.watchStreams[k] < watchStreamsPerConn {
			key = k
		}
	}
	c.watchStreams[key]++
	c.mu.Unlock()
	release := func() {
		c.mu.Lock()
		c.watchStreams[key]--
		c.mu.Unlock()
	}
	cc, err := c.connKey(key, addr)
	if err != nil {
		release()
		return nil, nil, err
	}
	return cc, release, nil
}

// stream runs one stream on addr. progressed: it delivered something after
// CREATED (the next failure starts a fresh backoff); connected: the member
// accepted a connection; stopped: the caller stopped the iteration.
func (w *watchRun) stream(ctx context.Context, addr string, yield func(Event, error) bool) (progressed, connected, stopped bool, err error) {
	cc, release, err := w.c.watchConn(addr)
	if err != nil {
		return false, false, false, err
	}
	defer release()
	var p peer.Peer
	defer func() { connected = connected || sentFrom(&p) }()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	idle := 3*w.o.every + time.Second
	var stalled atomic.Bool
	timer := time.AfterFunc(idle+w.c.cfg.DialTimeout, func() { stalled.Store(true); cancel() })
	defer timer.Stop()

	st, err := kvpb.NewWatchClient(cc).Watch(sctx, w.request(), grpc.MaxCallRecvMsgSize(maxWatchMessage), grpc.Peer(&p))
	if err != nil {
		return false, false, false, err
	}
	w.snap = nil
	// A caller busy with an item is not a silent member.
	deliver := func(ev Event) bool {
		timer.Stop()
		ok := yield(ev, nil)
		timer.Reset(idle)
		return ok
	}
	for {
		m, err := st.Recv()
		if err != nil {
			if stalled.Load() && ctx.Err() == nil {
				err = errStalled
			}
			return progressed, connected, false, err
		}
		connected = true
		timer.Reset(idle)
		by := m.GetHeader().GetServedBy()
		switch m.GetKind() {
		case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED:
			if !w.known {
				w.known, w.after, w.skip = true, m.GetIndex(), 0
			}
		case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT:
			// Held until complete: a snapshot cut short is sent again
			// whole by the next member, never delivered twice.
			w.snap = append(w.snap, m.GetEvents()...)
		case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT_END:
			progressed = true
			items := w.snap
			w.snap = nil
			w.after, w.skip = m.GetIndex(), 0
			for _, e := range items {
				if !deliver(Event{Kind: EventState, Index: m.GetIndex(), Change: e, ServedBy: by, Header: m.GetHeader()}) {
					return progressed, connected, true, nil
				}
			}
			if !deliver(Event{Kind: EventSnapshotEnd, Index: m.GetIndex(), ServedBy: by, Header: m.GetHeader()}) {
				return progressed, connected, true, nil
			}
		case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS:
			progressed = true
			for _, e := range m.GetEvents() {
				w.advance(e.GetIndex())
				if !deliver(Event{Kind: EventChange, Index: e.GetIndex(), Change: e, ServedBy: by, Header: m.GetHeader()}) {
					return progressed, connected, true, nil
				}
			}
			w.complete(m.GetIndex())
		case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_PROGRESS:
			progressed = true
			w.complete(m.GetIndex())
			if w.o.progress && !deliver(Event{Kind: EventProgress, Index: w.after, ServedBy: by, Header: m.GetHeader()}) {
				return progressed, connected, true, nil
			}
		}
	}
}

// advance moves the position past one delivered change of entry idx.
func (w *watchRun) advance(idx uint64) {
	if idx == w.after+1 {
		w.skip++
	} else if idx > w.after+1 {
		w.after, w.skip = idx-1, 1
	}
}

// complete records that every change up to index has been delivered.
func (w *watchRun) complete(index uint64) {
	if index > w.after {
		w.after, w.skip = index, 0
	}
}

// watchErr is err as an *Error when the member answered one.
func watchErr(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	if _, ok := status.FromError(err); !ok {
		return err
	}
	return classify(err, true).err
}

// watchFinal returns the error a watch ends with, or nil when another
// attempt may succeed.
func watchFinal(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, errStalled) {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil // a local connection error: try elsewhere
	}
	if info := errorInfo(st); info != nil {
		switch info.GetCode() {
		case kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED:
			return nil
		}
		return classify(err, true).err
	}
	switch st.Code() {
	case codes.Unimplemented, codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted:
		return classify(err, true).err
	}
	return nil
}

func errorInfo(st *status.Status) *kvpb.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*kvpb.ErrorInfo); ok {
			return info
		}
	}
	return nil
}
