package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "unknown flag"},
		{"no name", []string{"--data-dir", dir}, 2, "--name is required"},
		{"no data dir", []string{"--name", "n1"}, 2, "--data-dir is required"},
		{"bad initial cluster", []string{"--name", "n1", "--data-dir", dir, "--initial-cluster", "n1"}, 2, "--initial-cluster"},
		{"not in cluster", []string{"--name", "n9", "--data-dir", dir, "--initial-cluster", "n1=127.0.0.1:1"}, 2, "does not include"},
		{"bad duration", []string{"--name", "n1", "--data-dir", dir, "--min-ttl", "soon"}, 2, "min-ttl"},
		{"bad log level", []string{"--name", "n1", "--data-dir", dir, "--log-level", "loud"}, 2, "--log-level"},
		{"bad log store", []string{"--name", "n1", "--data-dir", dir, "--log-store", "rocks"}, 2, "--log-store \"rocks\": want wal or bolt"},
		{"extra arg", []string{"stray"}, 2, "unknown command"},
		{"gc percent", []string{"--name", "n1", "--data-dir", dir, "--gc-percent", "0"}, 2, "--gc-percent: want at least 10, or -1 (off), got 0"},
		{"watch history", []string{"--name", "n1", "--data-dir", dir, "--watch-history-events", "0"}, 2, "--watch-history-events: want at least 1, got 0"},
		{"watch buffer", []string{"--name", "n1", "--data-dir", dir, "--watch-buffer", "-3"}, 2, "--watch-buffer: want at least 1, got -3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr); code != tt.code {
				t.Errorf("run(%q) = %d, want %d (stderr %q)", tt.args, code, tt.code, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "kvd: ") || !strings.Contains(lines[0], tt.want) {
				t.Errorf("stderr = %q, want one line \"kvd: ...%s...\"", stderr.String(), tt.want)
			}
		})
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestStartupErrors(t *testing.T) {
	t.Run("data dir not writable", func(t *testing.T) {
		parent := t.TempDir()
		file := filepath.Join(parent, "file")
		os.WriteFile(file, nil, 0o600)
		var stderr bytes.Buffer
		code := run([]string{"--name", "n1", "--data-dir", filepath.Join(file, "sub"),
			"--client-addr", freePort(t), "--peer-addr", freePort(t), "--log-level", "error"}, &bytes.Buffer{}, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "kvd: data dir") {
			t.Errorf("run = %d, stderr %q; want 1 and \"kvd: data dir ...\"", code, stderr.String())
		}
	})
	t.Run("port in use", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var stderr bytes.Buffer
		code := run([]string{"--name", "n1", "--data-dir", t.TempDir(),
			"--client-addr", l.Addr().String(), "--peer-addr", freePort(t), "--log-level", "error"}, &bytes.Buffer{}, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "kvd: listen on client address") {
			t.Errorf("run = %d, stderr %q; want 1 and \"kvd: listen on client address ...\"", code, stderr.String())
		}
	})
}

// TestProcessRestartKeepsData runs the real binary with each log store: a
// single-node cluster acknowledges writes, is killed with SIGKILL, and has
// every acknowledged write after a restart on the same data dir, which also
// picks the data dir's log store by itself. While it runs, a second kvd on
// the same data dir is refused; asking for the other log store is refused.
func TestProcessRestartKeepsData(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kvd binary")
	}
	bin := kvdBinary(t)
	for _, store := range []string{"wal", "bolt"} {
		t.Run(store, func(t *testing.T) { testRestartKeepsData(t, bin, store) })
	}
}

func testRestartKeepsData(t *testing.T, bin, store string) {
	dataDir := t.TempDir()
	client, peer := freePort(t), freePort(t)
	start := func(extra ...string) (*exec.Cmd, *bytes.Buffer) {
		args := append([]string{"--name", "n1", "--data-dir", dataDir, "--client-addr", client, "--peer-addr", peer,
			"--heartbeat-timeout", "100ms", "--election-timeout", "100ms", "--leader-lease", "100ms"}, extra...)
		cmd := exec.Command(bin, args...)
		var logs bytes.Buffer
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &logs
	}
	conn, err := grpc.NewClient(client, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := kvpb.NewKVClient(conn)

	retry := func(what string, f func(ctx context.Context) error) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			err := f(ctx)
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	key := func(i int) []byte { return []byte("durable-" + strconv.Itoa(i)) }

	cmd, logs := start("--log-store", store)
	const n = 50
	for i := range n {
		retry("Put", func(ctx context.Context) error {
			_, err := kv.Put(ctx, &kvpb.PutRequest{Key: key(i), Value: []byte(store)})
			return err
		})
	}

	// The process reports its own resource use (kvctl bench reads it).
	st, err := kvpb.NewClusterClient(conn).Status(t.Context(), &kvpb.StatusRequest{})
	if err != nil || st.GetCpuMicros() == 0 || st.GetRssBytes() < 1<<20 {
		t.Errorf("Status: cpu %d us, rss %d bytes, %v; want both reported", st.GetCpuMicros(), st.GetRssBytes(), err)
	}

	// A second kvd on the same data dir while the first runs.
	second := exec.Command(bin, "--name", "n1", "--data-dir", dataDir, "--client-addr", freePort(t), "--peer-addr", freePort(t))
	out, err := second.CombinedOutput()
	if code := second.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "locked by another process") {
		t.Errorf("second kvd on the data dir: exit %d (%v), output %q; want 1 and \"locked by another process\"", code, err, out)
	}

	// Unclean stop: SIGKILL, so no shutdown path runs. The kernel keeps the
	// page cache, so this shows the log reopens after an unclean stop with
	// every acknowledged write, not that each write reached the disk (that
	// takes a power cut; the stores fsync every append before raft counts it).
	cmd.Process.Kill()
	cmd.Wait()
	if !strings.Contains(logs.String(), "kind="+store) {
		t.Errorf("logs do not say kind=%s:\n%s", store, logs)
	}

	other := map[string]string{"wal": "bolt", "bolt": "wal"}[store]
	wrong := exec.Command(bin, "--name", "n1", "--data-dir", dataDir, "--client-addr", client, "--peer-addr", peer, "--log-store", other)
	out, err = wrong.CombinedOutput()
	if code := wrong.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "already holds a \""+store+"\" log") {
		t.Errorf("restart with --log-store %s: exit %d (%v), output %q; want 1 and \"already holds a %q log\"", other, code, err, out, store)
	}

	cmd, logs = start()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("kvd exited with %v after SIGTERM; logs:\n%s", err, logs)
		}
	}()
	for i := range n {
		retry("Get after restart", func(ctx context.Context) error {
			r, err := kv.Get(ctx, &kvpb.GetRequest{Key: key(i)})
			if err == nil && string(r.GetKv().GetValue()) != store {
				t.Fatalf("Get(%s) = %q after the crash, want %q", key(i), r.GetKv().GetValue(), store)
			}
			return err
		})
	}
}
