package api

import (
	"context"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// write proposes cmd and returns its OK result with a response header, or
// an error (a non-OK result becomes a *kvError).
func (n *Server) write(ctx context.Context, cmd *kvpb.Command) (*kvpb.CommandResult, *kvpb.ResponseHeader, error) {
	res, at, err := n.propose(ctx, cmd)
	if err != nil {
		return nil, nil, err
	}
	if err := node.ResultError(res); err != nil {
		return nil, nil, err
	}
	return res, n.b.WriteHeader(at.Index, at.LogTime), nil
}

// commandSession is the session a command's request header names (0: none).
func commandSession(cmd *kvpb.Command) uint64 {
	m := cmd.ProtoReflect()
	if fd := m.WhichOneof(commandOp); fd != nil {
		op := m.Get(fd).Message()
		if hf := op.Descriptor().Fields().ByName("header"); hf != nil && op.Has(hf) {
			if h, ok := op.Get(hf).Message().Interface().(*kvpb.RequestHeader); ok {
				return h.GetSession()
			}
		}
	}
	return 0
}

var commandOp = (&kvpb.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("op")

// writeAs proposes cmd and answers with the fsm's typed result, picked out
// of the CommandResult by get (an empty message if the fsm set none), with
// the write's response header. Errors are gRPC statuses.
func writeAs[R proto.Message](ctx context.Context, n *Server, cmd *kvpb.Command, get func(*kvpb.CommandResult) R) (R, error) {
	var zero R
	res, hdr, err := n.write(ctx, cmd)
	if err != nil {
		return zero, n.toStatus(err)
	}
	resp := get(res)
	m := resp.ProtoReflect()
	if !m.IsValid() { // a nil *XResponse
		m = m.Type().New()
		resp = m.Interface().(R)
	}
	m.Set(m.Descriptor().Fields().ByName("header"), protoreflect.ValueOfMessage(hdr.ProtoReflect()))
	return resp, nil
}

type kvService struct {
	kvpb.UnimplementedKVServer
	n *Server
}

func (s *kvService) Put(ctx context.Context, req *kvpb.PutRequest) (*kvpb.PutResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkKey("key", req.GetKey()),
		n.checkValue("value", req.GetValue()),
		n.checkTTL("ttl_ms", req.GetTtlMs(), false),
		n.checkFence(req.GetFence()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error { return n.authzKeyWrite(ctx, req.GetKey(), req.GetFence(), req.GetHeader()) },
		func() error { return n.ownSession(ctx, req.GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	// The session the key is bound to must be live: refused here when this
	// member knows it has ended (the log decides otherwise).
	if err := n.checkSessionLive(req.GetSession()); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Put{Put: req}}, (*kvpb.CommandResult).GetPut)
}

func (s *kvService) Get(ctx context.Context, req *kvpb.GetRequest) (*kvpb.GetResponse, error) {
	n := s.n
	if err := n.checkKey("key", req.GetKey()); err != nil {
		return nil, n.toStatus(err)
	}
	now, hdr, err := n.readAllowed(ctx, req.GetConsistency(), kvpb.PermKind_PERM_KIND_KEYS, req.GetKey())
	if err != nil {
		return nil, err
	}
	if _, err := n.reserveAnswer(ctx, n.valueAnswerBytes()); err != nil {
		return nil, n.toStatus(err)
	}
	kv, at := n.b.FSM().GetAt(req.GetKey(), now)
	hdr.LogTime = at // the state read may be newer than the read's preparation
	if kv == nil {
		return nil, n.toStatus(&node.Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, Msg: "key not found"})
	}
	return &kvpb.GetResponse{Header: hdr, Kv: kv}, nil
}

func (s *kvService) Delete(ctx context.Context, req *kvpb.DeleteRequest) (*kvpb.DeleteResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkDeleteKey("", req),
		n.checkFence(req.GetFence()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	// With prefix, key is the prefix: readwrite on it covers every key
	// that starts with it (permissions are prefixes too).
	if err := n.authzKeyWrite(ctx, req.GetKey(), req.GetFence(), req.GetHeader()); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Delete{Delete: req}}, (*kvpb.CommandResult).GetDelete)
}

func (s *kvService) List(ctx context.Context, req *kvpb.ListRequest) (*kvpb.ListResponse, error) {
	n := s.n
	limit, err := n.listLimit("limit", req.GetLimit())
	if err == nil {
		err = firstErr(n.checkKeyLen("prefix", req.GetPrefix()), n.checkKeyLen("start_after", req.GetStartAfter()))
	}
	if err != nil {
		return nil, n.toStatus(err)
	}
	now, hdr, err := n.readAllowed(ctx, req.GetConsistency(), kvpb.PermKind_PERM_KIND_KEYS, req.GetPrefix())
	if err != nil {
		return nil, err
	}
	if _, err := n.reserveAnswer(ctx, n.listAnswerBytes()); err != nil {
		return nil, n.toStatus(err)
	}
	kvs, more, at := n.b.FSM().ListAt(req.GetPrefix(), req.GetStartAfter(), limit, n.limits.MaxResponseBytes, req.GetKeysOnly(), now)
	hdr.LogTime = at // the state read may be newer than the read's preparation
	return &kvpb.ListResponse{Header: hdr, Kvs: kvs, More: more}, nil
}

func (s *kvService) Add(ctx context.Context, req *kvpb.AddRequest) (*kvpb.AddResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkKey("key", req.GetKey()),
		n.checkFence(req.GetFence()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authzKeyWrite(ctx, req.GetKey(), req.GetFence(), req.GetHeader()); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Add{Add: req}}, (*kvpb.CommandResult).GetAdd)
}

func (s *kvService) Touch(ctx context.Context, req *kvpb.TouchRequest) (*kvpb.TouchResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkKey("key", req.GetKey()),
		n.checkTTL("ttl_ms", req.GetTtlMs(), false),
		n.checkFence(req.GetFence()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authzKeyWrite(ctx, req.GetKey(), req.GetFence(), req.GetHeader()); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Touch{Touch: req}}, (*kvpb.CommandResult).GetTouch)
}

func (s *kvService) Txn(ctx context.Context, req *kvpb.TxnRequest) (*kvpb.TxnResponse, error) {
	n := s.n
	if err := firstErr(n.checkHeader(req.GetHeader()), n.checkTxn(req)); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error { return n.allowTxn(ctx, req) },
		func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	// Its gets answer with values, as reads do: held to the connection's
	// unread budget before anything is proposed.
	if gets := max(countGets(req.GetSuccess()), countGets(req.GetFailure())); gets > 0 {
		if _, err := n.reserveAnswer(ctx, gets*n.valueAnswerBytes()); err != nil {
			return nil, n.toStatus(err)
		}
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Txn{Txn: req}}, (*kvpb.CommandResult).GetTxn)
}

func countGets(ops []*kvpb.TxnOp) int {
	n := 0
	for _, op := range ops {
		if op.GetGet() != nil {
			n++
		}
	}
	return n
}

// authzKeyWrite is the authorization of a write of key (or, for a delete
// by prefix, of every key under it): readwrite on it, read on the fence's
// lock, and ownership of the header's session.
func (n *Server) authzKeyWrite(ctx context.Context, key []byte, f *kvpb.Fence, h *kvpb.RequestHeader) error {
	return n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_KEYS, key, kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.allowFence(ctx, f) }, func() error { return n.ownSession(ctx, h.GetSession()) })
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

type sessionService struct {
	kvpb.UnimplementedSessionServer
	n *Server
}

func (s *sessionService) Create(ctx context.Context, req *kvpb.CreateSessionRequest) (*kvpb.CreateSessionResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkTTL("ttl_ms", req.GetTtlMs(), true),
		n.checkNameLen("name", len(req.GetName())),
		n.checkSessionCap(),
	); err != nil {
		return nil, n.toStatus(err)
	}
	req.Owner, _ = userOf(ctx) // a client's own value never counts
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_CreateSession{CreateSession: req}}, (*kvpb.CommandResult).GetCreateSession)
}

func (s *sessionService) KeepAlive(ctx context.Context, req *kvpb.KeepAliveRequest) (*kvpb.KeepAliveResponse, error) {
	n := s.n
	if req.GetId() == 0 {
		return nil, n.toStatus(invalid("id", 0, "id: required"))
	}
	if err := firstErr(n.checkSessionLive(req.GetId()), n.ownSession(ctx, req.GetId())); err != nil {
		return nil, n.toStatus(err)
	}
	res, at, err := n.b.RenewSession(ctx, req.GetId())
	if err == nil {
		err = node.ResultError(res)
	}
	if err != nil {
		return nil, n.toStatus(err)
	}
	hdr := n.b.WriteHeader(at.Index, at.LogTime)
	resp := res.GetKeepAlive()
	if resp == nil {
		resp = &kvpb.KeepAliveResponse{}
	}
	resp.Header = hdr
	return resp, nil
}

func (s *sessionService) Close(ctx context.Context, req *kvpb.CloseSessionRequest) (*kvpb.CloseSessionResponse, error) {
	n := s.n
	if req.GetId() == 0 {
		return nil, n.toStatus(invalid("id", 0, "id: required"))
	}
	if err := n.ownSession(ctx, req.GetId()); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_CloseSession{CloseSession: req}}, (*kvpb.CommandResult).GetCloseSession)
}

func (s *sessionService) Get(ctx context.Context, req *kvpb.GetSessionRequest) (*kvpb.GetSessionResponse, error) {
	n := s.n
	if req.GetId() == 0 {
		return nil, n.toStatus(invalid("id", 0, "id: required"))
	}
	now, hdr, err := n.b.Read(ctx, req.GetConsistency())
	if err != nil {
		return nil, n.toStatus(err)
	}
	info := n.b.FSM().Session(req.GetId(), now)
	if info == nil {
		return nil, n.toStatus(&node.Error{Code: kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, Msg: "session not found or expired"})
	}
	return &kvpb.GetSessionResponse{Header: hdr, Session: info}, nil
}
