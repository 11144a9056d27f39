package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// kvdStatus is what a kvd server answers: a status with an ErrorInfo.
func kvdStatus(c codes.Code, msg string, info *kvpb.ErrorInfo) error {
	st, err := status.New(c, msg).WithDetails(info)
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func TestErrorTable(t *testing.T) {
	tests := []struct {
		code     kvpb.ErrorCode
		grpc     codes.Code
		sentinel error
		class    class
	}{
		{kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, codes.NotFound, ErrNotFound, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH, codes.FailedPrecondition, ErrVersionMismatch, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED, codes.FailedPrecondition, ErrFenceFailed, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN, codes.FailedPrecondition, ErrStaleToken, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, codes.NotFound, ErrSessionExpired, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, codes.InvalidArgument, ErrInvalidArgument, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED, codes.ResourceExhausted, ErrLimitExceeded, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_NOT_INTEGER, codes.FailedPrecondition, ErrNotInteger, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE, codes.FailedPrecondition, ErrStaleSequence, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED, codes.FailedPrecondition, ErrSequenceReused, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, codes.Unavailable, ErrUnavailable, classRetry},
		{kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, codes.Unavailable, ErrIndeterminate, classMaybe},
		{kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, codes.DeadlineExceeded, ErrIndeterminate, classMaybe},
		{kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, codes.PermissionDenied, ErrPermissionDenied, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, codes.Unauthenticated, ErrUnauthenticated, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED, codes.Unauthenticated, ErrAuthFailed, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED, codes.Unauthenticated, ErrTokenExpired, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_USER_EXISTS, codes.AlreadyExists, ErrUserExists, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS, codes.AlreadyExists, ErrRoleExists, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_NO_ADMIN, codes.FailedPrecondition, ErrNoAdmin, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED, codes.FailedPrecondition, ErrAuthDisabled, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_OUT_OF_RANGE, codes.OutOfRange, ErrOutOfRange, classFinal},
		{kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED, codes.Aborted, ErrWatchCanceled, classRetry},
	}
	all := []error{ErrNotFound, ErrVersionMismatch, ErrFenceFailed, ErrStaleToken, ErrSessionExpired,
		ErrInvalidArgument, ErrLimitExceeded, ErrNotInteger, ErrStaleSequence, ErrSequenceReused, ErrUnavailable, ErrIndeterminate,
		ErrPermissionDenied, ErrUnauthenticated, ErrAuthFailed, ErrTokenExpired, ErrUserExists, ErrRoleExists,
		ErrNoAdmin, ErrAuthDisabled, ErrOutOfRange, ErrWatchCanceled}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/%v", tt.code, tt.grpc), func(t *testing.T) {
			err := kvdStatus(tt.grpc, "some text", &kvpb.ErrorInfo{Code: tt.code})
			for _, sent := range []bool{false, true} {
				r := classify(err, sent)
				if r.class != tt.class {
					t.Errorf("classify(sent=%v).class = %v, want %v", sent, r.class, tt.class)
				}
				for _, s := range all {
					if got, want := errors.Is(r.err, s), s == tt.sentinel; got != want {
						t.Errorf("errors.Is(%v, %v) = %v, want %v", r.err, s, got, want)
					}
				}
			}
		})
	}
	if len(errorTable) != len(kvpb.ErrorCode_name)-1 {
		t.Errorf("errorTable has %d codes, the proto %d (without OK)", len(errorTable), len(kvpb.ErrorCode_name)-1)
	}
}

func TestErrorFields(t *testing.T) {
	err := kvdStatus(codes.FailedPrecondition, `lock "db": token 12 is not current (current 15)`,
		&kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN, CurrentToken: 15, LeaderName: "n2", LeaderAddr: "10.0.0.2:2379"})
	r := classify(err, true)
	var e *Error
	if !errors.As(r.err, &e) {
		t.Fatalf("classify(...).err = %T, want *Error", r.err)
	}
	if got, want := e.Error(), `kvd: lock "db": token 12 is not current (current 15)`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if e.CurrentToken != 15 {
		t.Errorf("CurrentToken = %d, want 15", e.CurrentToken)
	}
	if r.leaderAddr != "10.0.0.2:2379" || r.leaderName != "n2" {
		t.Errorf("leader hint = %q %q, want n2 10.0.0.2:2379", r.leaderName, r.leaderAddr)
	}

	err = kvdStatus(codes.InvalidArgument, "kvd: key is 5000 bytes, limit 4096",
		&kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "key", Limit: 4096})
	if !errors.As(classify(err, false).err, &e) {
		t.Fatal("not an *Error")
	}
	if e.Field != "key" || e.Limit != 4096 || e.Error() != "kvd: key is 5000 bytes, limit 4096" {
		t.Errorf("got field %q limit %d msg %q", e.Field, e.Limit, e.Error())
	}

	// A server that names the code instead of a message gets the table's text.
	err = kvdStatus(codes.NotFound, "ERROR_CODE_NOT_FOUND", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND})
	if got := classify(err, true).err.Error(); got != "kvd: not found" {
		t.Errorf("Error() = %q, want %q", got, "kvd: not found")
	}
}

func TestClassifyTransport(t *testing.T) {
	tests := []struct {
		name string
		err  error
		sent bool
		want class
	}{
		{"refused before send", status.Error(codes.Unavailable, "connection refused"), false, classRetry},
		{"broke mid-call", status.Error(codes.Unavailable, "error reading from server: EOF"), true, classMaybe},
		{"attempt deadline, sent", status.Error(codes.DeadlineExceeded, "deadline"), true, classMaybe},
		{"attempt deadline, connecting", status.Error(codes.DeadlineExceeded, "deadline"), false, classRetry},
		{"canceled, sent", status.Error(codes.Canceled, "canceled"), true, classMaybe},
		{"internal", status.Error(codes.Internal, "boom"), true, classFinal},
		{"unimplemented", status.Error(codes.Unimplemented, "no"), true, classFinal},
		{"local error", errors.New("bad target"), false, classFinal},
		{"context error", context.DeadlineExceeded, true, classMaybe},
		{"dial error", &net.OpError{Op: "dial", Err: errors.New("refused")}, false, classFinal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.err, tt.sent).class; got != tt.want {
				t.Errorf("classify(%v, %v) = %v, want %v", tt.err, tt.sent, got, tt.want)
			}
		})
	}
	// gRPC's own size limit is a bad argument, not a retry.
	r := classify(status.Error(codes.ResourceExhausted, "message larger than max"), true)
	if r.class != classFinal || !errors.Is(r.err, ErrInvalidArgument) {
		t.Errorf("ResourceExhausted: class %v err %v, want final ErrInvalidArgument", r.class, r.err)
	}
}

func TestIndeterminateAndUnavailable(t *testing.T) {
	last := status.Error(codes.Unavailable, "connection reset")
	err := indeterminate(last, context.DeadlineExceeded)
	for _, target := range []error{ErrIndeterminate, context.DeadlineExceeded, last} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(indeterminate, %v) = false, want true", target)
		}
	}
	if errors.Is(err, ErrUnavailable) {
		t.Errorf("indeterminate matches ErrUnavailable (which means not applied)")
	}
	// Even when the last answer was NOT_LEADER.
	nl := classify(kvdStatus(codes.Unavailable, "no leader", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER}), true).err
	if err := indeterminate(nl, nil); errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrIndeterminate) {
		t.Errorf("indeterminate(NOT_LEADER): Is(ErrUnavailable) = %v, Is(ErrIndeterminate) = %v", errors.Is(err, ErrUnavailable), errors.Is(err, ErrIndeterminate))
	}

	err = unavailable(last, context.Canceled)
	for _, target := range []error{ErrUnavailable, context.Canceled, last} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(unavailable, %v) = false, want true", target)
		}
	}
	if errors.Is(err, ErrIndeterminate) {
		t.Errorf("unavailable matches ErrIndeterminate")
	}

	lost := &sessionLost{cause: last}
	for _, target := range []error{ErrSessionLost, ErrSessionExpired, last} {
		if !errors.Is(lost, target) {
			t.Errorf("errors.Is(sessionLost, %v) = false, want true", target)
		}
	}
}

func TestSeqTracker(t *testing.T) {
	var tr seqTracker
	if got := tr.minPending(); got != 1 {
		t.Fatalf("minPending() on a new tracker = %d, want 1", got)
	}
	s1, s2, s3 := tr.begin(), tr.begin(), tr.begin()
	if s1 != 1 || s2 != 2 || s3 != 3 {
		t.Fatalf("begin() = %d %d %d, want 1 2 3", s1, s2, s3)
	}
	steps := []struct {
		end  uint64
		want uint64
	}{
		{2, 1}, // ending a later one keeps the lowest
		{1, 3}, // the lowest ends: skip the already ended 2
		{1, 3}, // ending twice is harmless
		{3, 4}, // none in flight: the next seq
	}
	for _, st := range steps {
		tr.end(st.end)
		if got := tr.minPending(); got != st.want {
			t.Errorf("after end(%d): minPending() = %d, want %d", st.end, got, st.want)
		}
	}
	if s := tr.begin(); s != 4 || tr.minPending() != 4 {
		t.Errorf("begin() = %d, minPending() = %d, want 4 4", s, tr.minPending())
	}
}

func TestMs(t *testing.T) {
	tests := []struct {
		d    string
		want int64
	}{{"0s", 0}, {"-1s", 0}, {"1ns", 1}, {"1ms", 1}, {"1500us", 2}, {"30s", 30000}}
	for _, tt := range tests {
		d, _ := time.ParseDuration(tt.d)
		if got := ms(d); got != tt.want {
			t.Errorf("ms(%s) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

func TestLeaseMargin(t *testing.T) {
	for _, tt := range []struct{ ttl, want string }{{"60s", "6s"}, {"1s", "100ms"}, {"150ms", "75ms"}} {
		ttl, _ := time.ParseDuration(tt.ttl)
		want, _ := time.ParseDuration(tt.want)
		if got := leaseMargin(ttl); got != want {
			t.Errorf("leaseMargin(%v) = %v, want %v", ttl, got, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New(Config{}) = nil error, want one (no endpoints)")
	}
	if _, err := New(Config{Endpoints: []string{"a:1"}, DialTimeout: -1}); err == nil {
		t.Error("New with a negative DialTimeout = nil error")
	}
	c, err := New(Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if c.cfg.DialTimeout != DefaultDialTimeout || c.cfg.SessionTTL != DefaultSessionTTL || c.cfg.AttemptTimeout != DefaultAttemptTimeout {
		t.Errorf("defaults not applied: %+v", c.cfg)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := c.Get(t.Context(), []byte("k")); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
}
