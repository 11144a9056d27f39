package client

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// The token travels as gRPC metadata "authorization: Bearer <token>".
const (
	authorizationKey = "authorization"
	bearerPrefix     = "Bearer "
)

// signIn keeps the token of Config.Username and puts it on every call (a
// unary interceptor on every connection). It signs in on first use, again
// shortly before the token's TTL runs out, and once more when the server
// refuses a token it sent; concurrent calls share one sign-in.
type signIn struct {
	user, password string

	mu       sync.Mutex
	token    string
	renewAt  time.Time // sign in again from here on
	disabled bool      // the server said auth is off: send no token
	gen      uint64    // counts sign-ins
	flight   *flight   // the running sign-in, nil when none
}

// flight is one sign-in that concurrent callers wait for.
type flight struct {
	done chan struct{}
	err  error
}

// intercept adds the token to a call; when the server answers that the
// token expired or is not valid (or that a call without one needs one),
// it signs in again and retries the call once.
func (s *signIn) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if s.user == "" || method == kvpb.Auth_Authenticate_FullMethodName {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	tok, gen, err := s.current(ctx, cc, 0)
	if err != nil {
		return err
	}
	err = invoker(withToken(ctx, tok), method, req, reply, cc, opts...)
	if !tokenRefused(err) {
		return err
	}
	if tok, _, err = s.current(ctx, cc, gen); err != nil {
		return err
	}
	return invoker(withToken(ctx, tok), method, req, reply, cc, opts...)
}

// interceptStream adds the token to a streaming call. A refusal arrives
// with the first message, after the call has begun, so the call is not
// retried here: the refused token is dropped, and the next call signs in
// again.
func (s *signIn) interceptStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if s.user == "" {
		return streamer(ctx, desc, cc, method, opts...)
	}
	tok, gen, err := s.current(ctx, cc, 0)
	if err != nil {
		return nil, err
	}
	cs, err := streamer(withToken(ctx, tok), desc, cc, method, opts...)
	if err != nil {
		if tokenRefused(err) {
			s.drop(gen)
		}
		return nil, err
	}
	return &signedStream{ClientStream: cs, s: s, gen: gen}, nil
}

// signedStream drops its token when the server refuses it.
type signedStream struct {
	grpc.ClientStream
	s   *signIn
	gen uint64
}

func (ss *signedStream) RecvMsg(m any) error {
	err := ss.ClientStream.RecvMsg(m)
	if err != nil && tokenRefused(err) {
		ss.s.drop(ss.gen)
	}
	return err
}

// drop forgets the token of sign-in gen (if it is still the current one),
// so that the next call signs in again.
func (s *signIn) drop(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == gen {
		s.renewAt = time.Time{}
		s.disabled = false
	}
}

// tokenRefused reports whether err says the request's token (or the lack
// of one) was not accepted, so that signing in again may help.
func tokenRefused(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unauthenticated {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*kvpb.ErrorInfo); ok {
			switch info.GetCode() {
			case kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED, kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:
				return true
			}
		}
	}
	return false
}

func withToken(ctx context.Context, tok string) context.Context {
	if tok == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, authorizationKey, bearerPrefix+tok)
}

// current returns the token to send ("" while the server says auth is
// off) and its sign-in's number. It signs in when there is no token, when
// it is due for renewal, or when refused is the number of the sign-in whose
// token the server just refused (0: none was).
func (s *signIn) current(ctx context.Context, cc grpc.ClientConnInterface, refused uint64) (string, uint64, error) {
	for {
		s.mu.Lock()
		if f := s.flight; f != nil {
			s.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return "", 0, ctx.Err()
			}
			if f.err != nil {
				return "", 0, f.err
			}
			continue
		}
		fresh := s.gen > 0 && (s.disabled || time.Now().Before(s.renewAt))
		if fresh && (refused == 0 || s.gen != refused) {
			tok, gen := s.token, s.gen
			s.mu.Unlock()
			return tok, gen, nil
		}
		f := &flight{done: make(chan struct{})}
		s.flight = f
		s.mu.Unlock()

		sent := time.Now()
		resp, disabled, err := authenticate(ctx, cc, s.user, s.password)

		s.mu.Lock()
		s.flight = nil
		f.err = err
		if err == nil {
			s.gen++
			s.token, s.disabled = resp.GetToken(), disabled
			s.renewAt = renewAt(sent, time.Duration(resp.GetTtlMs())*time.Millisecond)
		}
		tok, gen := s.token, s.gen
		s.mu.Unlock()
		close(f.done)
		if err != nil {
			return "", 0, err
		}
		return tok, gen, nil
	}
}

// renewAt is when a token with ttl, asked for at sent, is renewed: after
// nine tenths of its life, measured from before the request went out.
// A ttl of 0 (none given) is renewed only when the server refuses it.
func renewAt(sent time.Time, ttl time.Duration) time.Time {
	if ttl <= 0 {
		return sent.Add(100 * 365 * 24 * time.Hour)
	}
	return sent.Add(ttl - ttl/10)
}

// authenticate asks cc for a token. disabled reports that auth is off on
// the cluster (the answer AUTH_DISABLED): no token is needed.
func authenticate(ctx context.Context, cc grpc.ClientConnInterface, user, password string) (*kvpb.AuthenticateResponse, bool, error) {
	resp, err := kvpb.NewAuthClient(cc).Authenticate(ctx, &kvpb.AuthenticateRequest{Name: user, Password: password})
	if err == nil {
		return resp, false, nil
	}
	if st, ok := status.FromError(err); ok {
		for _, d := range st.Details() {
			if info, ok := d.(*kvpb.ErrorInfo); ok && info.GetCode() == kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED {
				return nil, true, nil
			}
		}
	}
	return nil, false, err
}
