package main

import (
	"bytes"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHealth asks real kvd processes: a single-node cluster is healthy; a
// node waiting to be added (--join) answers but knows no leader; a closed
// port does not answer. Each failure is exit 1 with one line naming the
// endpoint and the reason.
func TestHealth(t *testing.T) {
	if testing.Short() {
		t.Skip("runs kvd processes")
	}
	bin := kvdBinary(t)
	startNode := func(args ...string) string {
		client := freePort(t)
		cmd := exec.Command(bin, append([]string{"--data-dir", t.TempDir(), "--client-addr", client, "--peer-addr", freePort(t), "--log-level", "error"}, args...)...)
		var logs bytes.Buffer
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Errorf("kvd %v: %v after SIGTERM; logs:\n%s", args, err, logs.String())
			}
		})
		return client
	}
	health := func(endpoint string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run([]string{"health", "--endpoint", endpoint, "--timeout", "2s"}, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	leader := startNode("--name", "n1")
	joiner := startNode("--name", "n2", "--join")
	closed := freePort(t)

	// The single node elects itself within a second or so.
	deadline := time.Now().Add(20 * time.Second)
	want := regexp.MustCompile(`^n1 \(` + regexp.QuoteMeta(leader) + `\) is healthy: leader, leader n1, term \d+, applied index \d+\n$`)
	for {
		code, out, errOut := health(leader)
		if code == 0 {
			if !want.MatchString(out) || errOut != "" {
				t.Errorf("kvd health %s: stdout %q, stderr %q; want one line matching %q", leader, out, errOut, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvd health %s: exit %d, %q; want 0 within 20s", leader, code, errOut)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, tt := range []struct {
		name, endpoint, want string
	}{
		{"no leader", joiner, "kvd: n2 (" + joiner + ") knows no leader (role follower, term 0)"},
		{"nothing listening", closed, "kvd: health of " + closed + ": rpc error: code = Unavailable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := health(tt.endpoint)
			if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, tt.want) {
				t.Errorf("kvd health %s: exit %d, stdout %q, stderr %q; want 1 and one line starting %q", tt.endpoint, code, out, errOut, tt.want)
			}
		})
	}

	t.Run("usage", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"health", "stray"}, &stdout, &stderr); code != 2 {
			t.Errorf("kvd health stray: exit %d, stderr %q; want 2", code, stderr.String())
		}
	})
}
