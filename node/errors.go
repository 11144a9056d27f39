package node

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// ErrStopped is returned by calls on a node that was shut down.
var ErrStopped = errors.New("node: stopped")

// Error is an error with a kvd error code. The node returns it for what it
// decides itself (NOT_LEADER, INDETERMINATE, a refused membership change);
// api turns it into a gRPC status through its one error table.
type Error struct {
	Code kvpb.ErrorCode
	// GRPC overrides the table's gRPC code when not OK (a context's own code,
	// FailedPrecondition for a refused membership change).
	GRPC         codes.Code
	Msg          string
	CurrentToken uint64 // FENCE_FAILED, STALE_TOKEN
	Field        string // INVALID_ARGUMENT
	Limit        int64  // INVALID_ARGUMENT
}

func (e *Error) Error() string { return e.Msg }

// ResultError turns a non-OK CommandResult into an *Error (nil when OK).
func ResultError(r *kvpb.CommandResult) error {
	if r.GetCode() == kvpb.ErrorCode_ERROR_CODE_OK {
		return nil
	}
	msg := r.GetMessage()
	if msg == "" {
		msg = r.GetCode().String()
	}
	return &Error{Code: r.GetCode(), Msg: msg, CurrentToken: r.GetCurrentToken()}
}

// Invalid is a validation error naming a field and its limit.
func Invalid(field string, limit int64, msg string) *Error {
	return &Error{Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: field, Limit: limit, Msg: msg}
}

var errNotLeader = &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, Msg: "not the leader"}

// IsNotLeader reports whether err says nothing was proposed because no
// leader took it (an *Error or a gRPC status with that ErrorInfo).
func IsNotLeader(err error) bool {
	return CodeOf(err) == kvpb.ErrorCode_ERROR_CODE_NOT_LEADER
}

// CodeOf returns the kvd error code err carries (OK when none).
func CodeOf(err error) kvpb.ErrorCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if st, ok := status.FromError(err); ok {
		if info := ErrorInfo(st); info != nil {
			return info.GetCode()
		}
	}
	return kvpb.ErrorCode_ERROR_CODE_OK
}

// ErrorInfo returns the ErrorInfo detail of st, or nil.
func ErrorInfo(st *status.Status) *kvpb.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*kvpb.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// fromStatus turns the leader's answer to a forwarded call back into an
// *Error, keeping its code, message and detail fields.
func fromStatus(st *status.Status, info *kvpb.ErrorInfo) *Error {
	e := &Error{Code: info.GetCode(), Msg: st.Message(), CurrentToken: info.GetCurrentToken(),
		Field: info.GetField(), Limit: info.GetLimit()}
	if st.Code() != codes.Unknown {
		e.GRPC = st.Code() // the leader's own override (see peerStatus)
	}
	return e
}

// peerStatus is the status the peer service answers with: the code and
// detail fields travel in an ErrorInfo, which fromStatus reads back on the
// forwarding node. The gRPC code is the error's override, or Unknown when it
// has none: api then maps the kvd code through its table.
func peerStatus(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	switch {
	case errors.As(err, &e):
	case errors.Is(err, context.DeadlineExceeded):
		e = &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.DeadlineExceeded, Msg: err.Error()}
	case errors.Is(err, context.Canceled):
		e = &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.Canceled, Msg: err.Error()}
	case errors.Is(err, ErrStopped):
		e = &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, Msg: "node is shutting down"}
	default:
		e = &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.Internal, Msg: err.Error()}
	}
	code := e.GRPC
	if code == codes.OK {
		code = codes.Unknown
	}
	st := status.New(code, e.Msg)
	if withInfo, err := st.WithDetails(&kvpb.ErrorInfo{Code: e.Code, CurrentToken: e.CurrentToken,
		Field: e.Field, Limit: e.Limit}); err == nil {
		st = withInfo
	}
	return st.Err()
}
