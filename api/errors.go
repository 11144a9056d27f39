package api

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// grpcCodes is THE table mapping kvd error codes to gRPC status codes
// (etcd's toGRPCErrorMap is the model). Clients tell codes that share a gRPC
// code apart by the ErrorInfo detail every non-OK status carries.
//
//   - NOT_FOUND, SESSION_EXPIRED -> NotFound (like etcd's "lease not found").
//   - VERSION_MISMATCH, FENCE_FAILED, STALE_TOKEN, NOT_INTEGER,
//     STALE_SEQUENCE, SEQUENCE_REUSED -> FailedPrecondition: the state does
//     not allow it; retrying the same request will not help.
//   - INVALID_ARGUMENT -> InvalidArgument; LIMIT_EXCEEDED, DISK_FULL,
//     QUOTA_EXCEEDED -> ResourceExhausted (the last two: refused before
//     anything was proposed, because a member's data dir is full or over
//     --quota-bytes).
//   - NOT_LEADER -> Unavailable: nothing was proposed, safe to retry anywhere.
//   - PERMISSION_DENIED -> PermissionDenied; UNAUTHENTICATED, AUTH_FAILED,
//     TOKEN_EXPIRED -> Unauthenticated (TOKEN_EXPIRED: sign in again);
//     USER_EXISTS, ROLE_EXISTS -> AlreadyExists (so does KEY_EXISTS, a
//     Put with if_absent of a key that exists); NO_ADMIN, AUTH_DISABLED ->
//     FailedPrecondition.
//   - OUT_OF_RANGE -> OutOfRange (a watch's after_index is older than the
//     member's history; ErrorInfo.limit is the oldest it serves);
//     WATCH_CANCELED -> Aborted (resume the watch).
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
	kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED:  codes.FailedPrecondition,
	kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS:       codes.AlreadyExists,

	kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED: codes.PermissionDenied,
	kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:   codes.Unauthenticated,
	kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED:       codes.Unauthenticated,
	kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED:     codes.Unauthenticated,
	kvpb.ErrorCode_ERROR_CODE_USER_EXISTS:       codes.AlreadyExists,
	kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS:       codes.AlreadyExists,
	kvpb.ErrorCode_ERROR_CODE_NO_ADMIN:          codes.FailedPrecondition,
	kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED:     codes.FailedPrecondition,
	// Never sent as such: api.propose turns it into NOT_LEADER.
	kvpb.ErrorCode_ERROR_CODE_AUTH_REVISION_STALE: codes.Unavailable,

	kvpb.ErrorCode_ERROR_CODE_DISK_FULL:      codes.ResourceExhausted,
	kvpb.ErrorCode_ERROR_CODE_QUOTA_EXCEEDED: codes.ResourceExhausted,

	kvpb.ErrorCode_ERROR_CODE_OUT_OF_RANGE:   codes.OutOfRange,
	kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED: codes.Aborted,
}

// GRPCCode returns the gRPC code kvd uses for an error code.
func GRPCCode(c kvpb.ErrorCode) codes.Code {
	if g, ok := grpcCodes[c]; ok {
		return g
	}
	return codes.Unknown
}

// invalid is a validation error naming a field and its limit.
func invalid(field string, limit int64, format string, args ...any) error {
	return node.Invalid(field, limit, fmt.Sprintf(format, args...))
}

// toStatus turns any error a handler meets into a gRPC status error with an
// ErrorInfo detail (leader hint included when known).
func (s *Server) toStatus(err error) error {
	if err == nil {
		return nil
	}
	var ke *node.Error
	switch {
	case errors.As(err, &ke):
	case errors.Is(err, context.DeadlineExceeded):
		ke = &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.DeadlineExceeded, Msg: err.Error()}
	case errors.Is(err, context.Canceled):
		ke = &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.Canceled, Msg: err.Error()}
	case errors.Is(err, node.ErrStopped), errors.Is(err, errStopping):
		ke = &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, Msg: "node is shutting down"}
	default:
		if st, ok := status.FromError(err); ok && node.ErrorInfo(st) != nil {
			return err // already ours
		}
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			ke = &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: st.Code(), Msg: st.Message()}
		} else {
			ke = &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.Internal, Msg: err.Error()}
		}
	}
	if ke.Code == kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED {
		s.metrics.fenceRefusals.WithLabelValues("write").Inc()
	}
	code := ke.GRPC
	if code == codes.OK {
		code = GRPCCode(ke.Code)
	}
	info := &kvpb.ErrorInfo{Code: ke.Code, CurrentToken: ke.CurrentToken, Field: ke.Field, Limit: ke.Limit}
	info.LeaderName, info.LeaderAddr = s.b.Leader()
	st := status.New(code, ke.Msg)
	if withInfo, err := st.WithDetails(info); err == nil {
		st = withInfo
	}
	return st.Err()
}
