package api

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// grpcCodes is THE table mapping kvd error codes to gRPC status codes
// (etcd's toGRPCErrorMap is the model). Clients tell codes that share a gRPC
// code apart by the ErrorInfo detail every non-OK status carries.
//
//   - NOT_FOUND, SESSION_EXPIRED -> NotFound (like etcd's "lease not found").
//   - VERSION_MISMATCH, FENCE_FAILED, STALE_TOKEN, NOT_INTEGER,
//     STALE_SEQUENCE -> FailedPrecondition: the state does not allow it;
//     retrying the same request will not help.
//   - INVALID_ARGUMENT -> InvalidArgument; LIMIT_EXCEEDED -> ResourceExhausted.
//   - NOT_LEADER -> Unavailable: nothing was proposed, safe to retry anywhere.
//   - INDETERMINATE -> Unavailable (or DeadlineExceeded/Canceled when the
//     caller's context ended while the command was in flight): the command
//     may or may not have been applied; retry only with the same
//     (session, seq).
var grpcCodes = map[kvpb.ErrorCode]codes.Code{
	kvpb.ErrorCode_ERROR_CODE_OK:               codes.OK,
	kvpb.ErrorCode_ERROR_CODE_NOT_FOUND:        codes.NotFound,
	kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH: codes.FailedPrecondition,
	kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED:     codes.FailedPrecondition,
	kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN:      codes.FailedPrecondition,
	kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED:  codes.NotFound,
	kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT: codes.InvalidArgument,
	kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED:   codes.ResourceExhausted,
	kvpb.ErrorCode_ERROR_CODE_NOT_INTEGER:      codes.FailedPrecondition,
	kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE:   codes.FailedPrecondition,
	kvpb.ErrorCode_ERROR_CODE_NOT_LEADER:       codes.Unavailable,
	kvpb.ErrorCode_ERROR_CODE_INDETERMINATE:    codes.Unavailable,
}

// GRPCCode returns the gRPC code kvd uses for an error code.
func GRPCCode(c kvpb.ErrorCode) codes.Code {
	if g, ok := grpcCodes[c]; ok {
		return g
	}
	return codes.Unknown
}

// kvError is an error with a kvd error code, turned into a gRPC status
// (with an ErrorInfo) at the edge of a handler.
type kvError struct {
	code         kvpb.ErrorCode
	grpc         codes.Code // overrides the table when not OK
	msg          string
	currentToken uint64
	field        string
	limit        int64
}

func (e *kvError) Error() string { return e.msg }

// resultError turns a non-OK CommandResult into an error.
func resultError(r *kvpb.CommandResult) error {
	if r.GetCode() == kvpb.ErrorCode_ERROR_CODE_OK {
		return nil
	}
	msg := r.GetMessage()
	if msg == "" {
		msg = r.GetCode().String()
	}
	return &kvError{code: r.GetCode(), msg: msg, currentToken: r.GetCurrentToken()}
}

// invalid is a validation error naming a field and its limit.
func invalid(field string, limit int64, format string, args ...any) error {
	return &kvError{code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, field: field, limit: limit,
		msg: fmt.Sprintf(format, args...)}
}

func isNotLeader(err error) bool {
	var ke *kvError
	if errors.As(err, &ke) {
		return ke.code == kvpb.ErrorCode_ERROR_CODE_NOT_LEADER
	}
	if st, ok := status.FromError(err); ok {
		if info := errorInfo(st); info != nil {
			return info.GetCode() == kvpb.ErrorCode_ERROR_CODE_NOT_LEADER
		}
	}
	return false
}

// errorInfo returns the ErrorInfo detail of st, or nil.
func errorInfo(st *status.Status) *kvpb.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*kvpb.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// toStatus turns any error a handler meets into a gRPC status error with an
// ErrorInfo detail (leader hint included when known).
func (n *Node) toStatus(err error) error {
	if err == nil {
		return nil
	}
	var ke *kvError
	switch {
	case errors.As(err, &ke):
	case errors.Is(err, context.DeadlineExceeded):
		ke = &kvError{code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, grpc: codes.DeadlineExceeded, msg: err.Error()}
	case errors.Is(err, context.Canceled):
		ke = &kvError{code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, grpc: codes.Canceled, msg: err.Error()}
	case errors.Is(err, ErrStopped):
		ke = &kvError{code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, msg: "node is shutting down"}
	default:
		if st, ok := status.FromError(err); ok && errorInfo(st) != nil {
			return err // already ours (a forwarded answer)
		}
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			ke = &kvError{code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, grpc: st.Code(), msg: st.Message()}
		} else {
			ke = &kvError{code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, grpc: codes.Internal, msg: err.Error()}
		}
	}
	code := ke.grpc
	if code == codes.OK {
		code = GRPCCode(ke.code)
	}
	info := &kvpb.ErrorInfo{Code: ke.code, CurrentToken: ke.currentToken, Field: ke.field, Limit: ke.limit}
	if n.raft != nil {
		info.LeaderName, info.LeaderAddr = n.leader()
	}
	st := status.New(code, ke.msg)
	if withInfo, err := st.WithDetails(info); err == nil {
		st = withInfo
	}
	return st.Err()
}
