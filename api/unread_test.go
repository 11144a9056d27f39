package api

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func frame(typ byte, payload int) []byte {
	b := make([]byte, 9+payload)
	b[0], b[1], b[2] = byte(payload>>16), byte(payload>>8), byte(payload)
	b[3] = typ
	binary.BigEndian.PutUint32(b[5:], 1)
	return b
}

// scan counts DATA payload only, however the frames are split across
// writes.
func TestCountingConnCountsDataPayload(t *testing.T) {
	var stream []byte
	stream = append(stream, frame(0x4, 18)...)    // SETTINGS
	stream = append(stream, frame(0x1, 40)...)    // HEADERS
	stream = append(stream, frame(0x0, 70000)...) // DATA
	stream = append(stream, frame(0x6, 8)...)     // PING
	stream = append(stream, frame(0x0, 5)...)     // DATA
	stream = append(stream, frame(0x0, 0)...)     // empty DATA
	for _, chunk := range []int{1, 7, 9, 4096, len(stream)} {
		c := &countingConn{cu: &connUnread{}}
		got := 0
		for b := stream; len(b) > 0; {
			k := min(chunk, len(b))
			got += c.scan(b[:k])
			b = b[k:]
		}
		if got != 70005 {
			t.Errorf("chunks of %d: counted %d DATA bytes, want 70005", chunk, got)
		}
	}
}

// A connection's answers wait while its unsent answers and those being
// built would pass the budget; one answer always may go; DATA written
// wakes the waiters; a wait that outlives its context is LIMIT_EXCEEDED.
func TestConnUnreadBudget(t *testing.T) {
	c := &connUnread{}
	ctx := context.Background()
	if err := c.reserve(ctx, 300, 100); err != nil { // alone: always
		t.Fatal(err)
	}
	c.settle(300, 250)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	err := c.reserve(short, 10, 100)
	var ke *node.Error
	if !errors.As(err, &ke) || ke.Code != kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED || ke.Limit != 100 {
		t.Fatalf("reserve over budget = %v, want LIMIT_EXCEEDED naming 100", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.reserve(ctx, 40, 100) }()
	select {
	case err := <-done:
		t.Fatalf("reserve returned %v while 250 bytes were unsent", err)
	case <-time.After(20 * time.Millisecond):
	}
	c.sent(200) // 50 left: 50 + 40 fits
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reserve did not wake when the answer was sent")
	}
	c.settle(40, 40)
	if c.pending != 90 || c.reserved != 0 {
		t.Errorf("pending %d reserved %d, want 90 and 0", c.pending, c.reserved)
	}
	c.sent(1000)
	if c.pending != 0 {
		t.Errorf("pending %d after more was sent than counted, want 0", c.pending)
	}
}

// countingCreds hands gRPC a counting connection and an AuthInfo that
// still reveals the wrapped credentials' own (TLS state for TLS).
func TestCountingCredsWrap(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	creds := countingCreds{insecureCreds()}
	conn, ai, err := creds.ServerHandshake(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := conn.(*countingConn); !ok {
		t.Errorf("conn is %T, want *countingConn", conn)
	}
	if ca, ok := ai.(countedAuth); !ok || ca.cu == nil || ca.AuthType() != "insecure" {
		t.Errorf("AuthInfo = %#v, want a countedAuth around the insecure one", ai)
	}
	if _, ok := tlsInfo(ai); ok {
		t.Error("tlsInfo found TLS on a plaintext connection")
	}
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }
