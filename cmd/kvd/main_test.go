package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
		{"extra arg", []string{"stray"}, 2, "unknown command"},
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

// TestProcessRestartKeepsData runs the real binary: a single-node cluster
// takes a write, stops on SIGTERM with status 0, and has the write after a
// restart on the same data dir.
func TestProcessRestartKeepsData(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kvd binary")
	}
	bin := filepath.Join(t.TempDir(), "kvd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dataDir := t.TempDir()
	client, peer := freePort(t), freePort(t)
	start := func() (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(bin, "--name", "n1", "--data-dir", dataDir, "--client-addr", client, "--peer-addr", peer,
			"--heartbeat-timeout", "100ms", "--election-timeout", "100ms", "--leader-lease", "100ms")
		var logs bytes.Buffer
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &logs
	}
	stop := func(cmd *exec.Cmd, logs *bytes.Buffer) {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("kvd exited with %v after SIGTERM; logs:\n%s", err, logs)
		}
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

	cmd, logs := start()
	retry("Put", func(ctx context.Context) error {
		_, err := kv.Put(ctx, &kvpb.PutRequest{Key: []byte("durable"), Value: []byte("yes")})
		return err
	})
	stop(cmd, logs)

	cmd, logs = start()
	defer stop(cmd, logs)
	retry("Get after restart", func(ctx context.Context) error {
		r, err := kv.Get(ctx, &kvpb.GetRequest{Key: []byte("durable")})
		if err == nil && string(r.GetKv().GetValue()) != "yes" {
			t.Fatalf("Get(durable) = %q, want yes", r.GetKv().GetValue())
		}
		return err
	})
}
