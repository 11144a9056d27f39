package node

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// dialRaft is a raft.StreamLayer that only dials: it opens Raft connections
// to a kvd peer port (header byte first), as a member's transport does.
type dialRaft struct{ net.Listener }

func (d dialRaft) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{peerHeaderRaft}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// TestHeartbeatsReachRaftMainLoop checks that a heartbeat arriving on the
// peer port is never handled on the transport's goroutine (Raft's fast
// path), whatever handler is installed: only Raft's main goroutine may
// change the term, or a deposed leader can write its queued proposals under
// the new leader's term (see mainLoopHeartbeats).
func TestHeartbeatsReachRaftMainLoop(t *testing.T) {
	n, err := New(Config{
		Name:             "solo",
		ClientAddr:       "127.0.0.1:1",
		PeerAddr:         "127.0.0.1:0",
		InMemoryStore:    true,
		InitialCluster:   []Peer{{Name: "solo", PeerAddr: "127.0.0.1:0"}},
		HeartbeatTimeout: 50 * time.Millisecond,
		ElectionTimeout:  50 * time.Millisecond,
		LeaderLease:      50 * time.Millisecond,
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n.Shutdown(ctx)
	}()
	for deadline := time.Now().Add(5 * time.Second); !n.IsLeader(); {
		if time.Now().After(deadline) {
			t.Fatal("the single member did not become leader in 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	term := n.raft.CurrentTerm()

	// Anyone (Raft at NewRaft, or this test) may offer a fast-path handler.
	var fast atomic.Int32
	n.trans.SetHeartbeatHandler(func(rpc raft.RPC) {
		fast.Add(1)
		rpc.Respond(&raft.AppendEntriesResponse{}, nil)
	})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := raft.NewNetworkTransport(dialRaft{lis}, 1, 5*time.Second, io.Discard)
	defer out.Close()
	// A heartbeat (term, leader address, nothing else) of an older term:
	// Raft's main loop answers it with its own term and changes nothing.
	req := &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("outsider"), Addr: []byte("127.0.0.1:9")},
		Term:      term - 1,
	}
	var resp raft.AppendEntriesResponse
	if err := out.AppendEntries("solo", raft.ServerAddress(n.mux.lis.Addr().String()), req, &resp); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	if got := fast.Load(); got != 0 {
		t.Errorf("the heartbeat went to the fast-path handler (%d calls), not to Raft's main loop", got)
	}
	if resp.Term != term || resp.Success {
		t.Errorf("heartbeat answer: term %d success %v, want Raft's own answer: term %d, refused", resp.Term, resp.Success, term)
	}
	if !n.IsLeader() || n.raft.CurrentTerm() != term {
		t.Errorf("an older term's heartbeat changed the member: leader %v, term %d (was %d)", n.IsLeader(), n.raft.CurrentTerm(), term)
	}
}
