// Package e2e runs real kvd processes over real TCP and checks what a user
// relies on: writes survive crashes of one node or of all of them, a new
// leader takes over, bad input leaves the server up and the data untouched.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/proccluster"
)

func newClient(t *testing.T, eps []string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: eps})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real kvd processes; skipped with -short")
	}
}

// TestLeaderCrash: kill -9 the leader while writing; writes resume on a new
// leader within a few seconds; the old leader restarts and catches up.
func TestLeaderCrash(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	acked := map[string]string{}
	put := func(i int) {
		t.Helper()
		k, v := fmt.Sprintf("k%04d", i), fmt.Sprintf("v%d", i)
		wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
		defer wcancel()
		if _, err := c.Put(wctx, []byte(k), []byte(v)); err != nil {
			t.Fatalf("Put(%q) = %v", k, err)
		}
		acked[k] = v
	}
	for i := 0; i < 50; i++ {
		put(i)
	}
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	put(50) // must succeed on a new leader, retried by the client
	t.Logf("first write after killing leader %s took %v", leader.Name, time.Since(start))
	for i := 51; i < 100; i++ {
		put(i)
	}
	newLeader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if newLeader == leader {
		t.Fatalf("leader is still %s after it was killed", leader.Name)
	}

	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := newLeader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitApplied(ctx, st.AppliedIndex); err != nil {
		t.Fatalf("restarted node did not catch up: %v", err)
	}
	// The restarted node serves every acknowledged write from its own state.
	only := newClient(t, []string{leader.ClientAddr})
	for k, v := range acked {
		resp, err := only.Get(ctx, []byte(k), client.WithStale())
		if err != nil {
			t.Fatalf("stale Get(%q) on restarted %s = %v", k, leader.Name, err)
		}
		if got := string(resp.Kv.Value); got != v {
			t.Fatalf("stale Get(%q) on restarted %s = %q, want %q", k, leader.Name, got, v)
		}
	}
}

// TestKillAllKeepsAcknowledgedWrites: every acknowledged write survives
// SIGKILL of every node at once.
func TestKillAllKeepsAcknowledgedWrites(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	const n = 200
	for i := 0; i < n; i++ {
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("durable/%04d", i)), []byte(fmt.Sprint(i))); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	if _, err := c.Add(ctx, []byte("durable-counter"), 7); err != nil {
		t.Fatalf("Add: %v", err)
	}
	for _, nd := range cl.Nodes {
		nd.Kill()
	}
	for _, nd := range cl.Nodes {
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	c2 := newClient(t, cl.Endpoints())
	var keys int
	var after []byte
	for {
		resp, err := c2.List(ctx, []byte("durable/"), client.WithStartAfter(after), client.WithLimit(64))
		if err != nil {
			t.Fatalf("List after restart: %v", err)
		}
		keys += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		after = resp.Kvs[len(resp.Kvs)-1].Key
	}
	if keys != n {
		t.Fatalf("after kill-all and restart List(durable/) found %d keys, want %d", keys, n)
	}
	resp, err := c2.Get(ctx, []byte("durable-counter"))
	if err != nil || string(resp.Kv.Value) != "7" {
		t.Fatalf("Get(durable-counter) = %v, %v; want 7", resp, err)
	}
}

// TestGarbageOnClientPort: bytes that are not HTTP/2 do not take a node down,
// and write nothing.
func TestGarbageOnClientPort(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	nd := cl.Nodes[0]
	before, err := nd.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	payloads := [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		bytes.Repeat([]byte{0xff}, 4096),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x00\x00\x00\x00\x00garbage"),
		{},
	}
	for _, p := range payloads {
		conn, err := net.DialTimeout("tcp", nd.ClientAddr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		conn.Write(p)
		conn.Read(make([]byte, 1024))
		conn.Close()
	}
	after, err := nd.Status(ctx)
	if err != nil {
		t.Fatalf("node stopped answering after garbage: %v", err)
	}
	if !nd.Running() {
		t.Fatal("node exited after garbage")
	}
	// A leader may append its own entries (ticks, member registration); what
	// must hold is that the node still serves writes.
	c := newClient(t, []string{nd.ClientAddr})
	if _, err := c.Put(ctx, []byte("after-garbage"), []byte("ok")); err != nil {
		t.Fatalf("Put after garbage: %v", err)
	}
	t.Logf("applied index %d -> %d", before.AppliedIndex, after.AppliedIndex)
}

// TestKvdRefusesBadStart: bad flags, an unwritable data dir and a port in use
// each give one clear line and a non-zero exit.
func TestKvdRefusesBadStart(t *testing.T) {
	skipShort(t)
	kvd, _ := proccluster.Binaries(t)
	ports := proccluster.FreePorts(t, 2)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	file := filepath.Join(t.TempDir(), "a-file")
	os.WriteFile(file, []byte("x"), 0o644)

	base := func(dir, client string) []string {
		peer := fmt.Sprintf("127.0.0.1:%d", ports[1])
		return []string{"--name", "n1", "--data-dir", dir, "--client-addr", client,
			"--peer-addr", peer, "--initial-cluster", "n1=" + peer}
	}
	okClient := fmt.Sprintf("127.0.0.1:%d", ports[0])
	tests := []struct {
		name string
		args []string
		want string // in the error line
	}{
		{"unknown flag", append(base(t.TempDir(), okClient), "--no-such-flag"), "no-such-flag"},
		{"data dir is a file", base(filepath.Join(file, "sub"), okClient), "data"},
		{"client port in use", base(t.TempDir(), busy.Addr().String()), busy.Addr().String()},
		{"bad initial cluster", []string{"--name", "n1", "--data-dir", t.TempDir(), "--client-addr", okClient,
			"--peer-addr", "127.0.0.1:1", "--initial-cluster", "n1"}, "initial-cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, kvd, tt.args...)
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("kvd %v: err = %v, want a non-zero exit; stderr:\n%s", tt.args, err, stderr.String())
			}
			if ctx.Err() != nil {
				t.Fatalf("kvd did not exit by itself")
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "kvd: ") || !strings.Contains(last, tt.want) {
				t.Fatalf("last stderr line = %q, want \"kvd: ...%s...\"", last, tt.want)
			}
		})
	}
}
