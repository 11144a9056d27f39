package api

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

type watchService struct {
	kvpb.UnimplementedWatchServer
	n *Server
}

// Watch streams the changes to the watched keys, locks, cache entries or
// sessions from this member's watch hub (see node.WatchHub): CREATED, then
// (when the position is older than the history) a snapshot, then changes
// and progress until the client goes away, the member stops (NOT_LEADER:
// watch elsewhere), or the stream is cancelled (a CANCELED message with the
// position to resume from, then WATCH_CANCELED).
//
// Authorization: read on the watched key or prefix of its kind (keys,
// locks, cache); sessions: the session's owner or an admin, and an admin
// for a prefix. It is checked when the stream opens and again before every
// message, so a revoked permission ends the stream.
func (s *watchService) Watch(req *kvpb.WatchRequest, stream kvpb.Watch_WatchServer) error {
	n := s.n
	ctx := stream.Context()
	if err := n.checkWatch(req); err != nil {
		return n.toStatus(err)
	}
	if err := n.allowWatch(ctx, req, true); err != nil {
		return n.toStatus(err)
	}
	spec := node.WatchSpec{
		Target:          req.GetTarget(),
		Key:             req.GetKey(),
		Prefix:          req.GetPrefix(),
		FromNow:         req.AfterIndex == nil,
		After:           req.GetAfterIndex(),
		Skip:            req.GetSkip(),
		Types:           req.GetTypes(),
		OutOfRangeError: req.GetOutOfRangeError(),
		Progress:        msDuration(req.GetProgressMs()),
	}
	w, err := n.b.WatchHub().Watch(ctx, spec)
	if err != nil {
		return n.toStatus(err)
	}
	defer w.Close()

	// The stream ends with the server too.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(n.ctx, cancel)()

	after, snap := w.Start()
	if err := stream.Send(&kvpb.WatchResponse{Header: n.b.LocalHeader(), Kind: kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED,
		Index: after, Snapshot: snap}); err != nil {
		return err
	}
	for {
		b, err := w.Next(wctx)
		if err != nil {
			return n.watchEnded(ctx, w, stream, err)
		}
		if err := n.allowWatch(ctx, req, false); err != nil {
			return n.toStatus(err)
		}
		msg := &kvpb.WatchResponse{Header: n.b.LocalHeader(), Kind: b.Kind, Index: b.Index, Events: b.State}
		for _, e := range b.Events {
			msg.Events = append(msg.Events, withPrev(e, req.GetPrevKv()))
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
}

// watchEnded is the status a watch stream ends with after Next failed.
func (n *Server) watchEnded(ctx context.Context, w *node.Watcher, stream kvpb.Watch_WatchServer, err error) error {
	switch {
	case n.ctx.Err() != nil:
		return n.toStatus(errStopping)
	case ctx.Err() != nil:
		return n.toStatus(ctx.Err())
	}
	var ke *node.Error
	if errors.As(err, &ke) && ke.Code == kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED {
		after, skip := w.Position()
		if serr := stream.Send(&kvpb.WatchResponse{Header: n.b.LocalHeader(), Kind: kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CANCELED,
			Index: after, Skip: skip}); serr != nil {
			return serr
		}
	}
	if errors.Is(err, node.ErrStopped) {
		return n.toStatus(errStopping)
	}
	return n.toStatus(err)
}

// withPrev is the event as a stream sends it: shared as it is, or (the
// watch asked for old values and there is one) a shallow copy with prev_kv.
func withPrev(e fsm.Event, prev bool) *kvpb.WatchEvent {
	if !prev || e.Prev == nil {
		return e.Change
	}
	src := e.Change.ProtoReflect()
	cp := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		cp.Set(fd, v)
		return true
	})
	out := cp.Interface().(*kvpb.WatchEvent)
	out.PrevKv = e.Prev
	return out
}

// maxWatchProgressMs bounds progress_ms (a day).
const maxWatchProgressMs = int64(24 * time.Hour / time.Millisecond)

// checkWatch validates a WatchRequest.
func (n *Server) checkWatch(req *kvpb.WatchRequest) error {
	switch req.GetTarget() {
	case kvpb.WatchTarget_WATCH_TARGET_KEYS, kvpb.WatchTarget_WATCH_TARGET_CACHE:
		if err := n.checkKeyLen("key", req.GetKey()); err != nil {
			return err
		}
	case kvpb.WatchTarget_WATCH_TARGET_LOCKS:
		if err := n.checkNameLen("key", len(req.GetKey())); err != nil {
			return err
		}
	case kvpb.WatchTarget_WATCH_TARGET_SESSIONS:
		if !req.GetPrefix() {
			if _, err := strconv.ParseUint(string(req.GetKey()), 10, 64); err != nil {
				return invalid("key", 0, "key: a session watch names a session id in decimal, got %q", req.GetKey())
			}
		}
		if err := n.checkNameLen("key", len(req.GetKey())); err != nil {
			return err
		}
	default:
		return invalid("target", 0, "target: unknown value %d", req.GetTarget())
	}
	if len(req.GetKey()) == 0 && !req.GetPrefix() {
		return invalid("key", 0, "key: must not be empty unless prefix is set")
	}
	if req.GetSkip() > 0 && req.AfterIndex == nil {
		return invalid("skip", 0, "skip: only with after_index")
	}
	if p := req.GetProgressMs(); p < 0 || p > maxWatchProgressMs {
		return invalid("progress_ms", maxWatchProgressMs, "progress_ms: %d is outside [0, %d]", p, maxWatchProgressMs)
	}
	if len(req.GetTypes()) > 64 {
		return invalid("types", 64, "types: %d types exceeds the limit of 64", len(req.GetTypes()))
	}
	for i, t := range req.GetTypes() {
		if _, ok := kvpb.EventType_name[int32(t)]; !ok || t == kvpb.EventType_EVENT_TYPE_UNSPECIFIED || t == kvpb.EventType_EVENT_TYPE_STATE {
			return invalid(fmt.Sprintf("types[%d]", i), 0, "types[%d]: %d is not an event type a change can have", i, t)
		}
	}
	return nil
}

// allowWatch checks that the caller may read what it watches (opening: the
// stream is being opened; later checks only look at the roles again).
func (n *Server) allowWatch(ctx context.Context, req *kvpb.WatchRequest, opening bool) error {
	read := kvpb.PermLevel_PERM_LEVEL_READ
	switch req.GetTarget() {
	case kvpb.WatchTarget_WATCH_TARGET_KEYS:
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_KEYS, req.GetKey(), read)
	case kvpb.WatchTarget_WATCH_TARGET_LOCKS:
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_LOCKS, req.GetKey(), read)
	case kvpb.WatchTarget_WATCH_TARGET_CACHE:
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_CACHE, req.GetKey(), read)
	}
	// Sessions have no permission of their own: one's owner may watch it.
	user, ok := userOf(ctx)
	if !ok || n.b.FSM().Auth().IsAdmin(user) {
		return nil
	}
	if req.GetPrefix() {
		return denied("watching every session needs the admin role; user %q does not hold it", user)
	}
	if !opening {
		return nil // a session's owner never changes (and its end must still be sent)
	}
	id, _ := strconv.ParseUint(string(req.GetKey()), 10, 64)
	return n.ownSession(ctx, id)
}
