package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Error is an error answered by a kvd server (or made by the client for
// outcomes that have an ErrorCode: ErrIndeterminate, ErrUnavailable).
// errors.Is matches it against the sentinel of the same Code.
type Error struct {
	Code kvpb.ErrorCode
	// Msg is the server's message (prefixed "kvd: "), or for an error the
	// client made (ErrIndeterminate, ErrUnavailable) its one-line summary,
	// to which Error adds what caused it.
	Msg string
	// Field and Limit name the broken limit of an INVALID_ARGUMENT.
	Field string
	Limit int64
	// CurrentToken is the lock's current token for FENCE_FAILED and
	// STALE_TOKEN (0: the lock is free).
	CurrentToken uint64

	// causes are what led to a client-made error (the last attempt's error,
	// the context's error); reached through Unwrap. detail is their text.
	causes []error
	detail string
}

// Error returns the server's message, or the client's summary followed by
// its causes.
func (e *Error) Error() string {
	if e.Msg != "" {
		return e.Msg + e.detail
	}
	if ent, ok := errorTable[e.Code]; ok {
		return ent.text
	}
	return fmt.Sprintf("kvd: error code %v", e.Code)
}

// Is reports whether target is an *Error with the same Code, so that
// errors.Is(err, client.ErrNotFound) works on any NOT_FOUND answer.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap returns the causes of a client-made error (ErrIndeterminate,
// ErrUnavailable): the last attempt's error and the context's error.
func (e *Error) Unwrap() []error { return e.causes }

// Errors. Every error the client returns for a server answer is an *Error;
// errors.Is matches it against these by code.
var (
	ErrNotFound        error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND}
	ErrVersionMismatch error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH}
	ErrFenceFailed     error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED}
	ErrStaleToken      error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN}
	ErrSessionExpired  error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED}
	ErrInvalidArgument error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT}
	ErrLimitExceeded   error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED}
	ErrNotInteger      error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_INTEGER}
	// ErrIndeterminate: the write may or may not have been applied. It
	// wraps the last attempt's error and the context's error.
	ErrIndeterminate error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE}
	// ErrUnavailable: no member answered, or no leader, before ctx ended.
	// The request was certainly not applied. It carries code NOT_LEADER and
	// wraps the last attempt's error and the context's error.
	ErrUnavailable error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER}
	// ErrStaleSequence: the server has forgotten the result of a command
	// (its seq is below what the session said was still pending).
	ErrStaleSequence error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE}
	// ErrSequenceReused: a (session, seq) was sent again with another
	// body. The client library never does this; a caller numbering its own
	// commands has a bug.
	ErrSequenceReused error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED}
	// ErrKeyExists: a Put with IfAbsent found the key (bound to another
	// session, or to none).
	ErrKeyExists error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS}
	// ErrDiskFull: a member's data dir is full; the write was refused
	// before it reached the log. Deletes may still be accepted. Writes
	// resume by themselves once the member has room again.
	ErrDiskFull error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_DISK_FULL}
	// ErrQuotaExceeded: a member's data dir holds its --quota-bytes or more;
	// the write was refused before it reached the log. Deletes are still
	// accepted.
	ErrQuotaExceeded error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_QUOTA_EXCEEDED}
	// ErrOutOfRange: a watch FromIndex older than the member's history,
	// WithOutOfRangeError. Error.Limit is the oldest index the member can
	// continue after.
	ErrOutOfRange error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_OUT_OF_RANGE}
	// ErrWatchCanceled: a member cancelled a watch stream (it fell behind,
	// or the member installed a snapshot). Watch resumes by itself; this is
	// only seen by callers of the raw RPC.
	ErrWatchCanceled error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED}

	// ErrPermissionDenied: the user's roles do not grant the operation.
	ErrPermissionDenied error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED}
	// ErrUnauthenticated: auth is enabled and the request named no user
	// (no Config.Username, no client certificate), or a token the server
	// does not accept.
	ErrUnauthenticated error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED}
	// ErrAuthFailed: wrong user name or password (the server never says
	// which).
	ErrAuthFailed error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED}
	// ErrTokenExpired: the token expired or was revoked, and signing in
	// again did not help.
	ErrTokenExpired error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED}
	ErrUserExists   error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_USER_EXISTS}
	ErrRoleExists   error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS}
	// ErrNoAdmin: the change would leave auth enabled with no admin user.
	ErrNoAdmin error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_NO_ADMIN}
	// ErrAuthDisabled: Authenticate while auth is off (no token is needed).
	ErrAuthDisabled error = &Error{Code: kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED}

	// ErrSessionLost is Session.Err when no keepalive was acknowledged in
	// time: the client can no longer be sure the server still holds the
	// session (it may, until its TTL runs out). Such an Err also matches
	// ErrSessionExpired, so code that only checks that one treats the
	// session as gone.
	ErrSessionLost = errors.New("kvd: session lost: no keepalive acknowledged before the local lease deadline")
	// ErrClosed: the Client or Session was closed.
	ErrClosed = errors.New("kvd: client closed")
)

// class says what a failed attempt means for the retry loop.
type class uint8

const (
	// classFinal: a definite answer; return it.
	classFinal class = iota
	// classRetry: certainly not applied (no leader, not sent); try again.
	classRetry
	// classMaybe: the request may have reached the log; a retry must reuse
	// the same seq, and if no definite answer comes, the outcome is unknown.
	classMaybe
)

func (c class) String() string {
	switch c {
	case classFinal:
		return "final"
	case classRetry:
		return "retry"
	case classMaybe:
		return "maybe"
	}
	return "?"
}

type tableEntry struct {
	sentinel error
	class    class
	text     string // message when the server gave none
}

// errorTable maps every ErrorCode the server sends back to its sentinel and
// to what the retry loop does with it. It mirrors the table in api.
var errorTable = map[kvpb.ErrorCode]tableEntry{
	kvpb.ErrorCode_ERROR_CODE_NOT_FOUND:        {ErrNotFound, classFinal, "kvd: not found"},
	kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH: {ErrVersionMismatch, classFinal, "kvd: version mismatch"},
	kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED:     {ErrFenceFailed, classFinal, "kvd: fence failed: token does not hold the lock"},
	kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN:      {ErrStaleToken, classFinal, "kvd: token is not current"},
	kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED:  {ErrSessionExpired, classFinal, "kvd: session expired"},
	kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT: {ErrInvalidArgument, classFinal, "kvd: invalid argument"},
	kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED:   {ErrLimitExceeded, classFinal, "kvd: limit exceeded"},
	kvpb.ErrorCode_ERROR_CODE_NOT_INTEGER:      {ErrNotInteger, classFinal, "kvd: value is not an integer"},
	kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE:   {ErrStaleSequence, classFinal, "kvd: stale sequence number"},
	kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED:  {ErrSequenceReused, classFinal, "kvd: sequence number reused with another command"},
	kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS:       {ErrKeyExists, classFinal, "kvd: key exists"},
	kvpb.ErrorCode_ERROR_CODE_NOT_LEADER:       {ErrUnavailable, classRetry, "kvd: no leader"},
	kvpb.ErrorCode_ERROR_CODE_INDETERMINATE:    {ErrIndeterminate, classMaybe, "kvd: outcome unknown"},

	kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED: {ErrPermissionDenied, classFinal, "kvd: permission denied"},
	kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:   {ErrUnauthenticated, classFinal, "kvd: not signed in"},
	kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED:       {ErrAuthFailed, classFinal, "kvd: wrong user name or password"},
	kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED:     {ErrTokenExpired, classFinal, "kvd: token expired"},
	kvpb.ErrorCode_ERROR_CODE_USER_EXISTS:       {ErrUserExists, classFinal, "kvd: user exists"},
	kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS:       {ErrRoleExists, classFinal, "kvd: role exists"},
	kvpb.ErrorCode_ERROR_CODE_NO_ADMIN:          {ErrNoAdmin, classFinal, "kvd: no user would hold the admin role"},
	kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED:     {ErrAuthDisabled, classFinal, "kvd: authentication is not enabled"},
	// The server answers NOT_LEADER in its place; should one arrive, nothing
	// was applied, so it is retried like NOT_LEADER.
	kvpb.ErrorCode_ERROR_CODE_AUTH_REVISION_STALE: {ErrUnavailable, classRetry, "kvd: auth changed while the request was in flight"},
	// Refused before proposing; final like etcd's NOSPACE: retrying at once
	// cannot help, and every member answers the same while the leader's
	// data dir is full.
	kvpb.ErrorCode_ERROR_CODE_DISK_FULL:      {ErrDiskFull, classFinal, "kvd: data dir full"},
	kvpb.ErrorCode_ERROR_CODE_QUOTA_EXCEEDED: {ErrQuotaExceeded, classFinal, "kvd: data dir over its quota"},

	kvpb.ErrorCode_ERROR_CODE_OUT_OF_RANGE:   {ErrOutOfRange, classFinal, "kvd: watch position is older than the member's history"},
	kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED: {ErrWatchCanceled, classRetry, "kvd: watch cancelled; resume it"},
}

// attemptResult is a classified failed attempt.
type attemptResult struct {
	class class
	err   error // *Error for kvd answers, the gRPC error otherwise
	// Leader hint from the answer (client address), "" when none.
	leaderName, leaderAddr string
	// addr is the member the attempt went to; noConn: no connection to it
	// could be made (nothing was sent, and no kvd server answered).
	addr   string
	noConn bool
	// unanswered: the member gave no answer at all (the attempt's own
	// timeout passed, or the connection failed), as a hung member does.
	unanswered bool
}

// classify turns the error of one attempt into what the retry loop needs.
// sent reports whether the RPC got a transport stream (grpc.Peer was filled):
// before that, nothing can have reached the server.
func classify(err error, sent bool) attemptResult {
	st, ok := status.FromError(err)
	if !ok {
		// Not a gRPC status: a local error (bad target, closed client).
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return attemptResult{class: maybeIf(sent), err: err}
		}
		return attemptResult{class: classFinal, err: err}
	}
	for _, d := range st.Details() {
		info, ok := d.(*kvpb.ErrorInfo)
		if !ok {
			continue
		}
		e := &Error{
			Code:         info.GetCode(),
			Msg:          serverMessage(info.GetCode(), st.Message()),
			Field:        info.GetField(),
			Limit:        info.GetLimit(),
			CurrentToken: info.GetCurrentToken(),
		}
		cl := classFinal
		if ent, ok := errorTable[e.Code]; ok {
			cl = ent.class
		}
		return attemptResult{class: cl, err: e, leaderName: info.GetLeaderName(), leaderAddr: info.GetLeaderAddr()}
	}
	switch st.Code() {
	case codes.Unavailable:
		// No answer from a kvd server: the connection could not be made
		// (not sent) or broke during the call (maybe applied).
		return attemptResult{class: maybeIf(sent), err: err, noConn: !sent}
	case codes.DeadlineExceeded:
		// Not sent: the connection was still being made.
		return attemptResult{class: maybeIf(sent), err: err, noConn: !sent}
	case codes.Canceled:
		return attemptResult{class: maybeIf(sent), err: err}
	case codes.ResourceExhausted:
		// gRPC's own message size limit, client or server side.
		return attemptResult{class: classFinal, err: &Error{
			Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT,
			Msg:  "kvd: request too large: " + st.Message(), Field: "request",
		}}
	}
	return attemptResult{class: classFinal, err: err}
}

func maybeIf(sent bool) class {
	if sent {
		return classMaybe
	}
	return classRetry
}

// serverMessage keeps the server's text, prefixed "kvd: " once.
func serverMessage(code kvpb.ErrorCode, msg string) string {
	if msg == "" || msg == code.String() {
		if ent, ok := errorTable[code]; ok {
			return ent.text
		}
		return fmt.Sprintf("kvd: error code %v", code)
	}
	if strings.HasPrefix(msg, "kvd: ") {
		return msg
	}
	return "kvd: " + msg
}

// sentFrom reports whether p was filled by grpc.Peer, i.e. the RPC got a
// transport stream and may have reached the server.
func sentFrom(p *peer.Peer) bool { return p.Addr != nil }

// indeterminate is the error of a write whose outcome is unknown.
func indeterminate(last, ctxErr error) error {
	return &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE,
		Msg:    "kvd: outcome unknown, the write may or may not have been applied",
		detail: causeText(last, ctxErr), causes: causes(last, ctxErr)}
}

// unavailable is the error of a request that certainly was not applied and
// got no answer before ctx ended.
func unavailable(last, ctxErr error) error {
	return &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER,
		Msg:    "kvd: unavailable: no leader or no member answered",
		detail: causeText(last, ctxErr), causes: causes(last, ctxErr)}
}

// unreachable is the error of a request none of whose endpoints accepted a
// connection (Config.UnreachableTimeout): it was not applied.
func unreachable(endpoints []string, last error) error {
	return &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER,
		Msg:    "kvd: unavailable: no endpoint accepts a connection (tried " + strings.Join(endpoints, ", ") + ")",
		detail: causeText(last, nil), causes: causes(last)}
}

// causeText is what Error adds to a client-made error's summary.
func causeText(last, ctxErr error) string {
	var s string
	if last != nil {
		s += ": " + last.Error()
	}
	if ctxErr != nil && (last == nil || !errors.Is(last, ctxErr)) {
		s += " (" + ctxErr.Error() + ")"
	}
	return s
}

func causes(errs ...error) []error {
	var out []error
	for _, e := range errs {
		if e == nil {
			continue
		}
		// A NOT_LEADER answer as cause of ErrIndeterminate would make
		// errors.Is(err, ErrUnavailable) true, which means "not applied":
		// keep only its own causes.
		var ke *Error
		if errors.As(e, &ke) && ke.Code == kvpb.ErrorCode_ERROR_CODE_NOT_LEADER {
			out = append(out, ke.causes...)
			continue
		}
		out = append(out, e)
	}
	return out
}

// sessionLost is Session.Err when the local lease deadline passed.
type sessionLost struct{ cause error }

func (e *sessionLost) Error() string {
	if e.cause == nil {
		return ErrSessionLost.Error()
	}
	return ErrSessionLost.Error() + ": last keepalive: " + e.cause.Error()
}

func (e *sessionLost) Unwrap() []error {
	errs := []error{ErrSessionLost, ErrSessionExpired}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}
