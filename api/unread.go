package api

import (
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Unread answers. gRPC queues a unary call's whole answer for sending as
// soon as the handler returns it, and flow control only decides when it
// leaves: a client that opens many calls and never reads makes the server
// hold every answer (400 Gets of a 1 MiB value: 400 MiB). The concurrent
// stream limit bounds how many calls a connection has open; this bounds
// the bytes: each connection counts the answer bytes it was given and the
// DATA bytes actually written to it, and a read that would build a large
// answer first waits until the connection's unsent answers plus what reads
// being built may add fit in Limits.MaxUnreadBytes (one answer always
// may, or nothing could be read at all). A client that never reads keeps
// its own calls waiting, holding a goroutine each and no answer; keepalive
// pings then close its connection.

// connUnread is one client connection's count.
type connUnread struct {
	mu       sync.Mutex
	pending  int64         // answer bytes handed to gRPC, not yet written as DATA
	reserved int64         // worst-case sizes of answers being built
	wake     chan struct{} // closed when pending drops, while someone waits
	slots    chan struct{} // pipelined calls in flight (pipeline.go)
	pipes    int           // Pipeline streams open
}

// reserve waits until an answer of up to n bytes fits in budget, then
// counts it as being built. It fails when ctx ends first.
func (c *connUnread) reserve(ctx context.Context, n, budget int64) error {
	c.mu.Lock()
	for {
		used := c.pending + c.reserved
		if used == 0 || used+n <= budget {
			c.reserved += n
			c.mu.Unlock()
			return nil
		}
		if c.wake == nil {
			c.wake = make(chan struct{})
		}
		wake := c.wake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED, Field: "max_unread_bytes", Limit: budget,
				Msg: fmt.Sprintf("this connection has %d bytes of earlier answers its client has not read, the limit (--max-unread-bytes %d): read them first",
					c.unsent(), budget)}
		}
		c.mu.Lock()
	}
}

func (c *connUnread) unsent() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending
}

// settle replaces a call's reservation with the size of its answer.
func (c *connUnread) settle(reserved, answer int64) {
	c.mu.Lock()
	c.reserved -= reserved
	c.pending += answer
	if reserved > answer {
		c.wakeLocked()
	}
	c.mu.Unlock()
}

// sent counts n bytes of DATA written to the connection.
func (c *connUnread) sent(n int64) {
	c.mu.Lock()
	c.pending = max(c.pending-n, 0)
	c.wakeLocked()
	c.mu.Unlock()
}

func (c *connUnread) wakeLocked() {
	if c.wake != nil {
		close(c.wake)
		c.wake = nil
	}
}

// countingCreds wraps the client port's transport credentials: every
// connection it hands to gRPC counts the DATA bytes written to it, and
// carries its connUnread in the connection's AuthInfo.
type countingCreds struct {
	credentials.TransportCredentials
}

// countedAuth is the AuthInfo of a counted connection: the wrapped
// credentials' own (TLSInfo for TLS), and the connection's count.
type countedAuth struct {
	credentials.AuthInfo
	cu *connUnread
}

func (c countingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return conn, ai, err
	}
	cu := &connUnread{}
	return &countingConn{Conn: conn, cu: cu}, countedAuth{AuthInfo: ai, cu: cu}, nil
}

func (c countingCreds) Clone() credentials.TransportCredentials {
	return countingCreds{c.TransportCredentials.Clone()}
}

// tlsInfo returns the TLS state of a connection's AuthInfo.
func tlsInfo(ai credentials.AuthInfo) (credentials.TLSInfo, bool) {
	if ca, ok := ai.(countedAuth); ok {
		ai = ca.AuthInfo
	}
	ti, ok := ai.(credentials.TLSInfo)
	return ti, ok
}

// countingConn counts the DATA payload the server writes, by following
// the HTTP/2 frame headers in the (plaintext, above TLS) byte stream.
// gRPC writes a connection from one goroutine; the mutex only keeps the
// parser's state consistent if that ever changes.
type countingConn struct {
	net.Conn
	cu *connUnread

	mu        sync.Mutex
	hdr       [9]byte
	hn        int  // bytes of hdr read
	remain    int  // payload bytes left in the current frame
	isData    bool // the current frame is DATA
	inPayload bool
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if data := c.scan(p[:n]); data > 0 {
		c.cu.sent(int64(data))
	}
	return n, err
}

// scan follows frame boundaries through b and returns how many of its
// bytes were DATA payload.
func (c *countingConn) scan(b []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	data := 0
	for len(b) > 0 {
		if !c.inPayload {
			k := copy(c.hdr[c.hn:], b)
			c.hn += k
			b = b[k:]
			if c.hn < len(c.hdr) {
				break
			}
			c.hn = 0
			c.remain = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
			c.isData = c.hdr[3] == 0 // DATA
			c.inPayload = c.remain > 0
			continue
		}
		k := min(c.remain, len(b))
		c.remain -= k
		b = b[k:]
		if c.isData {
			data += k
		}
		c.inPayload = c.remain > 0
	}
	return data
}

// answerAcct carries a call's reservation from its handler to the
// interceptor that settles it.
type answerAcct struct{ reserved int64 }

type answerAcctKey struct{}

func connOf(ctx context.Context) *connUnread {
	if p, ok := peer.FromContext(ctx); ok {
		if ca, ok := p.AuthInfo.(countedAuth); ok {
			return ca.cu
		}
	}
	return nil
}

// unaryUnread counts every answer against its connection, settling what
// the handler reserved (reserveAnswer).
func (s *Server) unaryUnread(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	cu := connOf(ctx)
	if cu == nil {
		return handler(ctx, req)
	}
	acct := &answerAcct{}
	resp, err := handler(context.WithValue(ctx, answerAcctKey{}, acct), req)
	var size int64
	if m, ok := resp.(proto.Message); ok && err == nil {
		size = int64(kvpb.Size(m)) + 5 // gRPC's length prefix
	}
	cu.settle(acct.reserved, size)
	return resp, err
}

// reserveAnswer waits, before a read builds an answer of up to worst
// bytes, until its connection has room for it (see connUnread). The reads
// whose answers can be large call it after their wait for the leader, so
// that a reservation lasts only while the answer is built; the interceptor
// settles it with the answer's size. unreserve gives it back early, for a
// handler that will not answer with what it reserved for.
func (s *Server) reserveAnswer(ctx context.Context, worst int) (unreserve func(), err error) {
	cu := connOf(ctx)
	acct, _ := ctx.Value(answerAcctKey{}).(*answerAcct)
	if cu == nil || acct == nil {
		return func() {}, nil
	}
	n := int64(worst)
	if err := cu.reserve(ctx, n, int64(s.limits.MaxUnreadBytes)); err != nil {
		return func() {}, err
	}
	acct.reserved += n
	return func() {
		acct.reserved -= n
		cu.settle(n, 0)
	}, nil
}
