package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kvdproject/kvd/internal/proccluster"
)

// The kvctl binary against real kvd processes: the exit codes of README and
// docs/kvctl.md, and the JSON conventions of docs/kvctl.md, command by
// command.

type kvctlResult struct {
	code           int
	stdout, stderr string
}

// kvctlRun runs the kvctl binary with args against endpoints, with stdin,
// and KVCTL and KVD_ENDPOINTS in its environment (for a lock's child). It
// gives it 30s: a kvctl that waits longer has not failed fast.
func kvctlRun(t *testing.T, endpoints []string, stdin string, args ...string) kvctlResult {
	t.Helper()
	_, kvctl := proccluster.Binaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	eps := strings.Join(endpoints, ",")
	cmd := exec.CommandContext(ctx, kvctl, append([]string{"--endpoints", eps}, args...)...)
	cmd.Env = append(os.Environ(), "KVCTL="+kvctl, "KVD_ENDPOINTS="+eps)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kvctl %v still running after 30s", args)
	}
	return kvctlResult{exitCodeOf(err), out.String(), errb.String()}
}

// startJoiner starts a fourth kvd, n4, with --join: it waits to be added.
func startJoiner(t *testing.T, cl *proccluster.Cluster) *proccluster.Node {
	t.Helper()
	ports := proccluster.FreePorts(t, 2)
	n4 := cl.AddNode("n4", fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1]), filepath.Join(cl.Dir, "n4"), nil)
	n4.Args = []string{"--name", "n4", "--data-dir", n4.DataDir, "--client-addr", n4.ClientAddr, "--peer-addr", n4.PeerAddr, "--join"}
	if err := n4.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := n4.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return n4
}

// closedPorts returns n addresses on 127.0.0.1 that refuse connections.
func closedPorts(t *testing.T, n int) []string {
	var out []string
	for _, p := range proccluster.FreePorts(t, n) {
		out = append(out, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return out
}

// TestKvctlExitCodes is the table of command -> exit code, each code as
// documented: 0 ok, 1 failed, 2 bad usage, 3 lock not acquired, 4 not
// found, 5 lock lost while the command ran, 6 outcome unknown.
func TestKvctlExitCodes(t *testing.T) {
	skipShort(t)
	// Long Raft timeouts: the last row pauses the leader and needs a
	// follower to go on forwarding to it for a few seconds.
	cl := proccluster.Start(t, 3, proccluster.Options{ExtraArgs: []string{"--heartbeat-timeout", "3s", "--election-timeout", "3s"}})
	eps := cl.Endpoints()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	// A fourth member, a non-voter, to transfer leadership to.
	n4 := startJoiner(t, cl)
	if r := kvctlRun(t, eps, "", "cluster", "add", "n4", n4.PeerAddr, "--non-voter"); r.code != 0 {
		t.Fatalf("cluster add n4 --non-voter: exit %d: %s", r.code, r.stderr)
	}
	// A session whose id the table uses, and one that is gone.
	r := kvctlRun(t, eps, "", "session", "create", "--ttl", "60s")
	if r.code != 0 {
		t.Fatalf("session create: exit %d: %s", r.code, r.stderr)
	}
	session := strings.TrimSpace(r.stdout)
	r = kvctlRun(t, eps, "", "session", "create", "--ttl", "60s")
	gone := strings.TrimSpace(r.stdout)
	if r := kvctlRun(t, eps, "", "session", "close", gone); r.code != 0 {
		t.Fatalf("session close: exit %d: %s", r.code, r.stderr)
	}

	tests := []struct {
		name       string
		args       []string
		stdin      string
		endpoints  []string // default: the cluster's
		setup      func(t *testing.T) (endpoints []string)
		wantCode   int
		wantStderr string // a part of stderr, for failures
	}{
		{name: "put", args: []string{"put", "k", "v"}, wantCode: 0},
		{name: "get", args: []string{"get", "k"}, wantCode: 0},
		{name: "put from stdin", args: []string{"put", "n"}, stdin: "41", wantCode: 0},
		{name: "add", args: []string{"add", "n", "1"}, wantCode: 0},
		{name: "del", args: []string{"del", "k"}, wantCode: 0},
		{name: "del of a missing key", args: []string{"del", "k"}, wantCode: 0},
		{name: "ls", args: []string{"ls"}, wantCode: 0},
		{name: "put bound to a session, if absent", args: []string{"put", "svc", "v", "--session", session, "--if-absent"}, wantCode: 0},
		{name: "touch", args: []string{"touch", "svc", "--ttl", "1m"}, wantCode: 0},
		{name: "del --prefix --dry-run", args: []string{"del", "--prefix", "sv", "--dry-run"}, wantCode: 0},
		{name: "txn: the failure branch is exit 0", args: []string{"txn"}, stdin: "exists(svc) = false\n\nput x 1\n\nget svc\n", wantCode: 0},
		{name: "version", args: []string{"version"}, wantCode: 0},
		{name: "snapshot save", args: []string{"snapshot", "save", filepath.Join(t.TempDir(), "backup.kvd")}, wantCode: 0},
		{name: "no command: help", args: []string{}, wantCode: 0},
		{name: "session get", args: []string{"session", "get", session}, wantCode: 0},
		{name: "session keepalive --once", args: []string{"session", "keepalive", session, "--once"}, wantCode: 0},
		{name: "session close of one gone", args: []string{"session", "close", gone}, wantCode: 0},
		{name: "cache set", args: []string{"cache", "set", "c", "v", "--ttl", "1m"}, wantCode: 0},
		{name: "cache get", args: []string{"cache", "get", "c"}, wantCode: 0},
		{name: "cache invalidate", args: []string{"cache", "invalidate", "c"}, wantCode: 0},
		{name: "cache stats", args: []string{"cache", "stats"}, wantCode: 0},
		{name: "cluster status", args: []string{"cluster", "status"}, wantCode: 0},
		{name: "cluster members", args: []string{"cluster", "members"}, wantCode: 0},
		{name: "cluster snapshot", args: []string{"cluster", "snapshot"}, wantCode: 0},
		{name: "lock acquire", args: []string{"lock", "acquire", "held", "--ttl", "60s"}, wantCode: 0},
		{name: "lock show", args: []string{"lock", "show", "held"}, wantCode: 0},
		{name: "lock list", args: []string{"lock", "list"}, wantCode: 0},
		{name: "lock acquire -- CMD: the child's code", args: []string{"lock", "acquire", "job", "--", "sh", "-c", "exit 7"}, wantCode: 7},

		{name: "cas mismatch", args: []string{"put", "n", "x", "--expect-version", "9"}, wantCode: 1, wantStderr: "version"},
		{name: "put if absent of a bound key", args: []string{"put", "svc", "w", "--if-absent"}, wantCode: 1, wantStderr: "bound to session " + session},
		{name: "put bound to a gone session", args: []string{"put", "k2", "v", "--session", gone}, wantCode: 1, wantStderr: "unknown or expired"},
		{name: "txn writing a key twice", args: []string{"txn"}, stdin: "\nput a 1\ndel a\n", wantCode: 1, wantStderr: "at most once per branch"},
		{name: "add to a non-integer", args: []string{"add", "n", "1"}, setup: func(t *testing.T) []string { kvctlRun(t, eps, "", "put", "n", "abc"); return nil }, wantCode: 1, wantStderr: "is not a decimal int64"},
		{name: "fenced put with a stale token", args: []string{"put", "f", "v", "--fence", "held:1"}, wantCode: 1, wantStderr: "not current"},
		{name: "lock check of a stale token", args: []string{"lock", "check", "held", "--token", "1"}, wantCode: 1, wantStderr: "does not hold"},
		{name: "lock release of another grant's lock", args: []string{"lock", "release", "held", "--token", "1"}, wantCode: 1, wantStderr: "held with token"},
		{name: "cluster transfer to a non-voter", args: []string{"cluster", "transfer", "n4"}, wantCode: 1, wantStderr: "non-voter"},
		{name: "no endpoint accepts a connection", args: []string{"get", "k", "--timeout", "60s"}, endpoints: closedPorts(t, 2), wantCode: 1, wantStderr: "no endpoint accepts a connection (tried 127.0.0.1:"},

		{name: "snapshot status of no file", args: []string{"snapshot", "status", filepath.Join(t.TempDir(), "none.kvd")}, wantCode: 1, wantStderr: "snapshot status"},

		{name: "unknown command", args: []string{"foo"}, wantCode: 2, wantStderr: `unknown command "foo"`},
		{name: "unknown subcommand", args: []string{"lock", "foo"}, wantCode: 2, wantStderr: `unknown command "foo" for "kvctl lock"`},
		{name: "unknown flag", args: []string{"get", "k", "--bogus"}, wantCode: 2, wantStderr: "bogus"},
		{name: "missing argument", args: []string{"get"}, wantCode: 2, wantStderr: "want 1 argument"},
		{name: "bad output format", args: []string{"get", "k", "-o", "yaml"}, wantCode: 2, wantStderr: "want text or json"},
		{name: "bad duration", args: []string{"put", "k", "v", "--ttl", "soon"}, wantCode: 2, wantStderr: "ttl"},
		{name: "lock release without --token", args: []string{"lock", "release", "held"}, wantCode: 2, wantStderr: "--token"},
		{name: "touch without --ttl", args: []string{"touch", "svc"}, wantCode: 2, wantStderr: "--ttl is required"},
		{name: "txn that does not parse", args: []string{"txn"}, stdin: "version(k) = x\n", wantCode: 2, wantStderr: "line 1: "},

		{name: "lock acquire of a held lock", args: []string{"lock", "acquire", "held", "--wait", "200ms"}, wantCode: 3, wantStderr: "held by session"},
		{name: "lock acquire -- CMD of a held lock", args: []string{"lock", "acquire", "held", "--", "true"}, wantCode: 3, wantStderr: "not acquired"},

		{name: "get of a missing key", args: []string{"get", "missing"}, wantCode: 4, wantStderr: "not found"},
		{name: "touch of a missing key", args: []string{"touch", "missing", "--ttl", "1s"}, wantCode: 4, wantStderr: "not found"},
		{name: "session get of a gone session", args: []string{"session", "get", gone}, wantCode: 4},
		{name: "session keepalive of a gone session", args: []string{"session", "keepalive", gone, "--once"}, wantCode: 4},
		{name: "cache get of a miss", args: []string{"cache", "get", "c"}, wantCode: 4, wantStderr: "miss"},
		{name: "lock show of an unknown lock", args: []string{"lock", "show", "nosuchlock"}, wantCode: 4, wantStderr: "not found"},
		{name: "lock release of a free lock", args: []string{"lock", "release", "nolock", "--token", "5"}, wantCode: 4, wantStderr: "not held"},
		{name: "lock renew of a free lock", args: []string{"lock", "renew", "nolock", "--token", "5"}, wantCode: 4, wantStderr: "not held"},
		{name: "lock break of a free lock", args: []string{"lock", "break", "nolock"}, wantCode: 4, wantStderr: "not held"},
		{name: "user get of no such user", args: []string{"user", "get", "nobody"}, wantCode: 4, wantStderr: "user nobody"},
		{name: "role get of no such role", args: []string{"role", "get", "nothing"}, wantCode: 4, wantStderr: "role nothing"},
		{name: "cluster remove of no such member", args: []string{"cluster", "remove", "n9"}, wantCode: 4, wantStderr: `no member named "n9"`},
		{name: "cluster transfer to no such member", args: []string{"cluster", "transfer", "n9"}, wantCode: 4, wantStderr: `no member named "n9"`},

		{name: "lock lost while the command ran", args: []string{"lock", "acquire", "doomed", "--ttl", "3s", "--", "sh", "-c", `"$KVCTL" lock break doomed --reason test >/dev/null; sleep 30`},
			wantCode: 5, wantStderr: "lost while sh ran"},

		// A member removal is not retried once it may have been applied.
		// Asked of a follower, it is forwarded to the leader, which is
		// paused: no answer comes before --timeout.
		{name: "outcome unknown", args: []string{"cluster", "remove", "n9", "--timeout", "1500ms"}, wantCode: 6, wantStderr: "outcome unknown",
			setup: func(t *testing.T) []string {
				leader, err := cl.WaitLeader(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var follower string
				for _, nd := range cl.Nodes[:3] {
					if nd != leader {
						follower = nd.ClientAddr
					}
				}
				if err := leader.Pause(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { leader.Resume() })
				return []string{follower}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, endpoints := tt.args, tt.endpoints
			if tt.setup != nil {
				if eps := tt.setup(t); eps != nil {
					endpoints = eps
				}
			}
			if endpoints == nil {
				endpoints = eps
			}
			r := kvctlRun(t, endpoints, tt.stdin, args...)
			if r.code != tt.wantCode {
				t.Fatalf("kvctl %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, tt.wantCode, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("kvctl %v: stderr %q, want it to contain %q", args, r.stderr, tt.wantStderr)
			}
			if r.code != 0 && r.code < 7 && (!strings.HasPrefix(r.stderr, "kvctl: ") || strings.Count(strings.TrimSpace(r.stderr), "\n") > 1) {
				t.Errorf("kvctl %v: stderr %q, want one line (two for a lost lock) starting \"kvctl: \"", args, r.stderr)
			}
		})
	}
}

// TestKvctlJSONConventions runs every kvctl command with -o json and checks
// docs/kvctl.md's conventions on what it prints. The commands come from
// kvctl's own help, so a new command without a row fails the test.
func TestKvctlJSONConventions(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	eps := cl.Endpoints()
	must := func(stdin string, args ...string) string {
		t.Helper()
		r := kvctlRun(t, eps, stdin, args...)
		if r.code != 0 {
			t.Fatalf("kvctl %v: exit %d: %s", args, r.code, r.stderr)
		}
		return strings.TrimSpace(r.stdout)
	}
	must("", "put", "text", "hé", "--ttl", "1h")
	must("\xff\xfe", "put", "bin")
	must("", "put", "count", "1")
	session := must("", "session", "create", "--ttl", "60s", "--name", "json")
	closing := must("", "session", "create", "--ttl", "60s")
	var grant struct{ Token uint64 }
	if err := json.Unmarshal([]byte(must("", "-o", "json", "lock", "acquire", "L", "--ttl", "60s")), &grant); err != nil || grant.Token == 0 {
		t.Fatalf("lock acquire: no token (%v)", err)
	}
	token := strconv.FormatUint(grant.Token, 10)
	must("", "-o", "json", "lock", "acquire", "B", "--ttl", "60s", "--lock-delay", "30s")
	// A waiter in L's line, for the waiters' instants; it leaves when it
	// gives up (after the test).
	waiter := exec.Command(mustBinary(t), "--endpoints", strings.Join(eps, ","), "lock", "acquire", "L", "--wait", "60s", "--", "true")
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { waiter.Process.Kill(); waiter.Wait() })
	waitFor(t, 20*time.Second, "a waiter is in L's line", func() bool {
		return strings.Contains(kvctlRun(t, eps, "", "lock", "show", "L").stdout, "waiters:    1")
	})
	must("", "cache", "set", "c", "v", "--ttl", "1m", "--stale", "1m")
	n4 := startJoiner(t, cl)
	must("", "cache", "set", "gone", "v", "--ttl", "1m")

	// A user with the admin role, for auth enable (and its password, for
	// auth disable once auth is on).
	dir := t.TempDir()
	must("admin-pw\n", "user", "add", "root", "--password-stdin")
	must("", "user", "grant-role", "root", "admin")
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("admin-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	type row struct {
		name     string // the command; a note in parentheses may follow
		args     []string
		stdin    string
		wantCode int
		noHeader string   // why it has no header ("" when it has one)
		want     []string // paths that must be there, so that no check is vacuous
	}
	const report = "a report over many responses"
	// In order: some rows use what an earlier one made.
	rows := []row{
		{name: "put", args: []string{"put", "k", "v", "--ttl", "30s"}, want: []string{"kv.expires_at_ns", "kv.key", "kv.value"}},
		{name: "get", args: []string{"get", "text"}, want: []string{"kv.expires_at_wall", "kv.value"}},
		{name: "get (binary value)", args: []string{"get", "bin"}, want: []string{"kv.value_base64"}},
		{name: "del", args: []string{"del", "k"}, want: []string{"deleted"}},
		{name: "ls", args: []string{"ls"}, want: []string{"kvs", "more"}},
		{name: "add", args: []string{"add", "count", "2"}, want: []string{"new_value", "kv.key"}},
		{name: "touch", args: []string{"touch", "text", "--ttl", "2h"}, want: []string{"kv.expires_at_wall", "kv.key", "kv.version"}},
		{name: "del (prefix, dry run)", args: []string{"del", "--prefix", "te", "--dry-run"}, want: []string{"dry_run", "keys.0.key", "would_delete"}},
		{name: "del (prefix)", args: []string{"del", "--prefix", "nothing/"}, want: []string{"deleted"}},
		{name: "put (bound to a session)", args: []string{"put", "svc", "v", "--session", session, "--if-absent"}, want: []string{"kv.session"}},
		{name: "txn", args: []string{"txn"}, stdin: "value(count) = 3\n\nput t v --ttl 1m\nget count\ndel --prefix nothing/\n", want: []string{"succeeded", "results.0.kv.expires_at_in_ms", "results.1.kv.value", "results.1.found", "results.2.deleted", "results.2.prefix"}},
		{name: "txn (json in)", args: []string{"txn", "-i", "json"}, stdin: `{"failure": [{"op": "get", "key_base64": "/w=="}], "compare": [{"target": "exists", "key": "count", "op": "=", "exists": false}]}`, want: []string{"succeeded", "results.0.key_base64", "results.0.found"}},
		{name: "session create", args: []string{"session", "create", "--ttl", "30s"}, want: []string{"session.expires_at_in_ms", "session.created_at_ns", "session.ttl_ms"}},
		{name: "session keepalive", args: []string{"session", "keepalive", session, "--once"}, want: []string{"session.expires_at_ns", "session.name"}},
		{name: "session get", args: []string{"session", "get", session}, want: []string{"session.expires_at_ns", "session.keys"}},
		{name: "session close", args: []string{"session", "close", closing}, want: []string{"closed"}},
		{name: "lock acquire", args: []string{"lock", "acquire", "A", "--ttl", "30s"}, want: []string{"expires_at_wall", "token", "session", "name"}},
		{name: "lock release", args: []string{"lock", "release", "A", "--token", "$A"}, want: []string{"released_token"}},
		{name: "lock renew", args: []string{"lock", "renew", "L", "--token", token}, want: []string{"lock.expires_at_ns", "lock.held_since_ns"}},
		{name: "lock show", args: []string{"lock", "show", "L"}, want: []string{"lock.expires_at_ns", "lock.waiters.0.queued_at_ns", "lock.waiters.0.wait_until_wall"}},
		{name: "lock list", args: []string{"lock", "list"}, want: []string{"locks.0.name"}},
		{name: "lock break", args: []string{"lock", "break", "B", "--reason", "test"}, want: []string{"broken_token", "reason"}},
		{name: "lock check", args: []string{"lock", "check", "L", "--token", token}, want: []string{"valid", "current_token"}},
		{name: "cache get", args: []string{"cache", "get", "c"}, want: []string{"fresh_until_ns", "stale_until_in_ms", "value", "state"}},
		{name: "cache set", args: []string{"cache", "set", "d", "v", "--ttl", "1m"}, want: []string{"fresh_until_wall", "filled_index"}},
		{name: "cache invalidate", args: []string{"cache", "invalidate", "gone"}, want: []string{"invalidated"}},
		{name: "cache stats", args: []string{"cache", "stats"}, want: []string{"entries", "stores"}},
		{name: "cluster status", args: []string{"cluster", "status"}, want: []string{"members.0.header.log_time_ns", "members.0.role"}},
		{name: "cluster members", args: []string{"cluster", "members"}, want: []string{"members.2.name"}},
		{name: "cluster add", args: []string{"cluster", "add", "n4", "$N4PEER", "--non-voter"}, want: []string{"members.3.voter"}},
		{name: "cluster remove", args: []string{"cluster", "remove", "n9"}, wantCode: 4},
		{name: "cluster snapshot", args: []string{"cluster", "snapshot"}, want: []string{"index"}},
		{name: "cluster transfer", args: []string{"cluster", "transfer"}, want: []string{"leader"}},
		{name: "snapshot save", args: []string{"snapshot", "save", "$DIR/backup.kvd"}, want: []string{"index", "log_time_wall", "sha256"}},
		{name: "snapshot status", args: []string{"snapshot", "status", "$DIR/backup.kvd"}, noHeader: "a file, no server", want: []string{"index", "log_time_ns", "log_time"}},
		{name: "role add", args: []string{"role", "add", "viewer"}, want: []string{"role.name", "role.permissions"}},
		{name: "role grant", args: []string{"role", "grant", "viewer", "--perm", "read", "--keys", "app/"}, want: []string{"role.permissions.0.prefix"}},
		{name: "role get", args: []string{"role", "get", "viewer"}, want: []string{"role.permissions.0.level"}},
		{name: "role list", args: []string{"role", "list"}, want: []string{"roles.1.name"}},
		{name: "role revoke", args: []string{"role", "revoke", "viewer", "--keys", "app/"}, want: []string{"role.permissions"}},
		{name: "user add", args: []string{"user", "add", "ann", "--password-stdin"}, stdin: "pw1\n", want: []string{"user.name", "user.has_password"}},
		{name: "user passwd", args: []string{"user", "passwd", "ann", "--password-stdin"}, stdin: "pw2\n", want: []string{"user.revision"}},
		{name: "user grant-role", args: []string{"user", "grant-role", "ann", "viewer"}, want: []string{"user.roles.0"}},
		{name: "user get", args: []string{"user", "get", "ann"}, want: []string{"user.roles.0"}},
		{name: "user list", args: []string{"user", "list"}, want: []string{"users.1.name"}},
		{name: "user revoke-role", args: []string{"user", "revoke-role", "ann", "viewer"}, want: []string{"user.roles"}},
		{name: "user delete", args: []string{"user", "delete", "ann"}, want: []string{"deleted"}},
		{name: "role delete", args: []string{"role", "delete", "viewer"}, want: []string{"deleted"}},
		{name: "auth status", args: []string{"auth", "status"}, want: []string{"enabled", "revision"}},
		{name: "auth enable", args: []string{"auth", "enable"}, want: []string{"enabled"}},
		{name: "auth disable", args: []string{"--user", "root", "--password-file", "$DIR/pw", "auth", "disable"}, want: []string{"enabled"}},
		{name: "version", args: []string{"version"}, noHeader: "no server is asked", want: []string{"version", "go"}},
		{name: "bench put", args: []string{"bench", "put", "--total", "20", "--clients", "2"}, noHeader: report, want: []string{"requests", "latency.p50_ms"}},
		{name: "bench get", args: []string{"bench", "get", "--total", "20", "--clients", "2", "--key-space", "10"}, noHeader: report, want: []string{"requests"}},
		{name: "bench lock", args: []string{"bench", "lock", "--total", "4", "--lockers", "2"}, noHeader: report, want: []string{"requests"}},
		{name: "bench keepalive", args: []string{"bench", "keepalive", "--total", "20", "--clients", "2"}, noHeader: report, want: []string{"requests"}},
		{name: "bench memoize", args: []string{"bench", "memoize", "--total", "20", "--clients", "2"}, noHeader: report, want: []string{"requests"}},
		{name: "bench watch", args: []string{"bench", "watch", "--watchers", "2", "--rate", "100", "--total", "10"}, noHeader: report, want: []string{"deliveries", "latency_p50_ms"}},
		// One line of the stream: the first change to "text" (or, had the
		// member lost that history, the first item of a snapshot).
		{name: "watch", args: []string{"watch", "text", "--from-index", "0", "--count", "1"}, want: []string{"kind", "index", "key", "log_time_wall", "kv.value"}},
		// Not JSON: help, and completion (a shell script).
	}

	covered := map[string]bool{}
	for _, r := range rows {
		covered[r.name] = true
	}
	for _, c := range kvctlCommands(t) {
		if c == "help" || c == "completion" || strings.HasPrefix(c, "completion ") {
			continue
		}
		if !covered[c] {
			t.Errorf("kvctl %s has no row in this test; add one", c)
		}
	}

	var tokenA string
	for _, tt := range rows {
		name := tt.name
		t.Run(name, func(t *testing.T) {
			args := slices.Clone(tt.args)
			for i, a := range args {
				args[i] = strings.NewReplacer("$A", tokenA, "$N4PEER", n4.PeerAddr, "$DIR", dir).Replace(a)
			}
			r := kvctlRun(t, eps, tt.stdin, append([]string{"-o", "json"}, args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("kvctl -o json %v: exit %d, want %d: %s", args, r.code, tt.wantCode, r.stderr)
			}
			if tt.wantCode != 0 {
				if r.stdout != "" {
					t.Errorf("kvctl -o json %v failed and printed %q on stdout, want nothing", args, r.stdout)
				}
				return
			}
			dec := json.NewDecoder(strings.NewReader(r.stdout))
			dec.UseNumber()
			var v map[string]any
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("kvctl -o json %v printed %q: %v", args, r.stdout, err)
			}
			if dec.More() {
				t.Errorf("kvctl -o json %v printed more than one object: %q", args, r.stdout)
			}
			if _, ok := v["header"]; ok == (tt.noHeader != "") {
				t.Errorf("kvctl -o json %v: header present = %v, want %v (%s)", args, ok, tt.noHeader == "", tt.noHeader)
			}
			for _, p := range checkConventions(v, nil, "") {
				t.Errorf("kvctl -o json %v: %s\n%s", args, p, r.stdout)
			}
			for _, path := range tt.want {
				if !hasPath(v, path) {
					t.Errorf("kvctl -o json %v: no %s in %s", args, path, r.stdout)
				}
			}
			if name == "lock acquire" {
				tokenA = v["token"].(json.Number).String()
			}
		})
	}
}

func mustBinary(t *testing.T) string {
	_, kvctl := proccluster.Binaries(t)
	return kvctl
}

// kvctlCommands lists every kvctl command that does something (no group),
// from kvctl's own help: "put", "lock acquire", ...
func kvctlCommands(t *testing.T) []string {
	var out []string
	var walk func(path []string)
	walk = func(path []string) {
		r := kvctlRun(t, []string{"127.0.0.1:1"}, "", append(path, "--help")...)
		subs := helpSubcommands(r.stdout)
		if len(subs) == 0 {
			out = append(out, strings.Join(path, " "))
			return
		}
		for _, s := range subs {
			walk(append(slices.Clone(path), s))
		}
	}
	walk(nil)
	if len(out) < 20 {
		t.Fatalf("kvctl's help lists %d commands: %v; want them all", len(out), out)
	}
	return out
}

var helpLine = regexp.MustCompile(`^  (\S+)\s`)

// helpSubcommands reads the "Available Commands:" block of cobra's help.
func helpSubcommands(help string) []string {
	var subs []string
	in := false
	for _, line := range strings.Split(help, "\n") {
		switch {
		case line == "Available Commands:":
			in = true
		case in && strings.TrimSpace(line) == "":
			return subs
		case in:
			if m := helpLine.FindStringSubmatch(line); m != nil {
				subs = append(subs, m[1])
			}
		}
	}
	return subs
}

// checkConventions returns every way v breaks docs/kvctl.md's JSON
// conventions. hdr is the header instants are measured against (the
// nearest one above, or v's own).
func checkConventions(v any, hdr map[string]any, path string) []string {
	var problems []string
	switch v := v.(type) {
	case []any:
		for i, e := range v {
			problems = append(problems, checkConventions(e, hdr, fmt.Sprintf("%s[%d]", path, i))...)
		}
	case map[string]any:
		if h, ok := v["header"].(map[string]any); ok {
			problems = append(problems, checkHeader(h, path+".header")...)
			hdr = h
		} else if _, ok := v["header"]; ok {
			problems = append(problems, path+".header is not an object")
		}
		for k, val := range v {
			at := path + "." + k
			if k == "header" {
				continue
			}
			switch {
			case strings.HasSuffix(k, "_ns"):
				problems = append(problems, checkInstant(v, strings.TrimSuffix(k, "_ns"), hdr, path)...)
			case strings.HasSuffix(k, "_ms"):
				if _, ok := val.(json.Number); !ok {
					problems = append(problems, fmt.Sprintf("%s = %v: a duration in ms must be a number", at, val))
				}
			case strings.HasSuffix(k, "_base64"):
				base := strings.TrimSuffix(k, "_base64")
				s, _ := val.(string)
				b, err := base64.StdEncoding.DecodeString(s)
				if _, both := v[base]; both || err != nil || utf8.Valid(b) {
					problems = append(problems, fmt.Sprintf("%s: base64 only for bytes that are not UTF-8, and then without %q (%v)", at, base, err))
				}
			case k == "key" || k == "value" || k == "name":
				if _, ok := val.(string); !ok {
					problems = append(problems, fmt.Sprintf("%s = %v: want a string", at, val))
				}
			}
			if s, ok := val.(string); ok {
				if _, err := time.Parse(time.RFC3339Nano, s); err == nil {
					_, hasNs := v[k+"_ns"]
					if !hasNs && !strings.HasSuffix(k, "_wall") {
						problems = append(problems, fmt.Sprintf("%s = %q: a time without %s_ns", at, s, k))
					}
				}
			}
			problems = append(problems, checkConventions(val, hdr, at)...)
		}
	}
	return problems
}

func checkHeader(h map[string]any, path string) []string {
	var problems []string
	for _, k := range []string{"applied_index", "log_time_ns", "wall_time_ns", "term"} {
		if n, ok := h[k].(json.Number); !ok || n.String() == "0" {
			problems = append(problems, fmt.Sprintf("%s.%s = %v, want a number > 0", path, k, h[k]))
		}
	}
	if s, ok := h["served_by"].(string); !ok || s == "" {
		problems = append(problems, fmt.Sprintf("%s.served_by = %v, want a member's name", path, h["served_by"]))
	}
	if _, ok := h["stale"].(bool); !ok {
		problems = append(problems, fmt.Sprintf("%s.stale = %v, want a bool", path, h["stale"]))
	}
	for _, k := range []string{"log_time", "wall_time"} {
		if want := rfc3339Of(h[k+"_ns"]); h[k] != want {
			problems = append(problems, fmt.Sprintf("%s.%s = %v, want %q (its _ns)", path, k, h[k], want))
		}
	}
	return problems
}

// checkInstant checks the four fields of the instant base in o.
func checkInstant(o map[string]any, base string, hdr map[string]any, path string) []string {
	at := path + "." + base
	ns, err := num(o[base+"_ns"])
	if err != nil {
		return []string{fmt.Sprintf("%s_ns = %v: %v", at, o[base+"_ns"], err)}
	}
	var problems []string
	if want := rfc3339Of(o[base+"_ns"]); o[base] != want {
		problems = append(problems, fmt.Sprintf("%s = %v, want %q (its _ns)", at, o[base], want))
	}
	if hdr == nil {
		// Nothing to measure against: X_ns and X only.
		if _, ok := o[base+"_in_ms"]; ok {
			problems = append(problems, at+"_in_ms: an instant measured against no header")
		}
		return problems
	}
	logTime, _ := num(hdr["log_time_ns"])
	wall, _ := num(hdr["wall_time_ns"])
	left := time.Duration(ns - logTime)
	if in, err := num(o[base+"_in_ms"]); err != nil || in != left.Milliseconds() {
		problems = append(problems, fmt.Sprintf("%s_in_ms = %v, want %d (from the header's log time)", at, o[base+"_in_ms"], left.Milliseconds()))
	}
	if want := time.Unix(0, wall+int64(left)).UTC().Format(time.RFC3339Nano); o[base+"_wall"] != want {
		problems = append(problems, fmt.Sprintf("%s_wall = %v, want %q (the header's wall time plus the time left)", at, o[base+"_wall"], want))
	}
	return problems
}

func num(v any) (int64, error) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("not a number")
	}
	return n.Int64()
}

func rfc3339Of(v any) string {
	n, err := num(v)
	if err != nil {
		return fmt.Sprintf("(no time: %v)", err)
	}
	return time.Unix(0, n).UTC().Format(time.RFC3339Nano)
}

// hasPath reports whether v has the dotted path ("kv.key", "members.0.name").
func hasPath(v any, path string) bool {
	for _, p := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[p]; !ok {
				return false
			}
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i >= len(x) {
				return false
			}
			v = x[i]
		default:
			return false
		}
	}
	return true
}

// TestKvctlAcrossWholeClusterOutage: a lock holder exits 5 soon after the
// whole cluster dies (not after --timeout), and once the cluster is back,
// with log time behind the wall clock by the outage, a TTL is shown as the
// time left and a wall-clock time that a person can act on, and cluster
// status shows the lag.
func TestKvctlAcrossWholeClusterOutage(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	eps := cl.Endpoints()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	holder := kvctlCmd(ctx, t, cl, "lock", "acquire", "held", "--ttl", "4s", "--timeout", "60s", "--", "sleep", "60")
	var hout bytes.Buffer
	holder.Stdout, holder.Stderr = &hout, &hout
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "kvctl holds the lock", func() bool { return kvctlRun(t, eps, "", "lock", "show", "held").code == 0 })
	down := time.Now()
	for _, nd := range cl.Nodes {
		if err := nd.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	exited := make(chan error, 1)
	go func() { exited <- holder.Wait() }()
	select {
	case err := <-exited:
		if code := exitCodeOf(err); code != 5 {
			t.Fatalf("lock holder exit %d, want 5 (lock lost)\n%s", code, hout.String())
		}
		t.Logf("lock holder exited 5 %v after the cluster died", time.Since(down).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatalf("lock holder (--ttl 4s, --timeout 60s) still running 30s after the cluster died\n%s", hout.String())
	}

	// Log time stands still while no member runs.
	const outage = 4 * time.Second
	time.Sleep(time.Until(down.Add(outage)))
	for _, nd := range cl.Nodes {
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}

	before := time.Now()
	if r := kvctlRun(t, eps, "", "put", "lagkey", "v", "--ttl", "30s"); r.code != 0 {
		t.Fatalf("put: exit %d: %s", r.code, r.stderr)
	}
	r := kvctlRun(t, eps, "", "-o", "json", "get", "lagkey")
	after := time.Now()
	var got struct {
		KV struct {
			ExpiresAtNs   int64  `json:"expires_at_ns"`
			ExpiresAtInMs int64  `json:"expires_at_in_ms"`
			ExpiresAtWall string `json:"expires_at_wall"`
		} `json:"kv"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); r.code != 0 || err != nil {
		t.Fatalf("get -o json: exit %d, %q (%v) %s", r.code, r.stdout, err, r.stderr)
	}
	// The log time of the expiry lags the wall clock by about the outage...
	if lag := before.Add(30 * time.Second).Sub(time.Unix(0, got.KV.ExpiresAtNs)); lag < outage/2 {
		t.Fatalf("expires_at (log time) only %v before put time + 30s; want the outage's lag (is log time not behind?)", lag)
	}
	// ...while what is shown to act on is the 30s.
	if in := got.KV.ExpiresAtInMs; in <= 20000 || in > 30000 {
		t.Errorf("expires_at_in_ms = %d, want the 30s TTL less the time since the put", in)
	}
	wall, err := time.Parse(time.RFC3339Nano, got.KV.ExpiresAtWall)
	if err != nil {
		t.Fatalf("expires_at_wall %q: %v", got.KV.ExpiresAtWall, err)
	}
	if lo, hi := before.Add(30*time.Second-time.Second), after.Add(30*time.Second+time.Second); wall.Before(lo) || wall.After(hi) {
		t.Errorf("expires_at_wall = %v, want put time + 30s, in [%v, %v]", wall, lo, hi)
	}

	r = kvctlRun(t, eps, "", "-o", "json", "cluster", "status")
	var st struct {
		Members []struct {
			Name  string `json:"name"`
			Role  string `json:"role"`
			LagMs *int64 `json:"log_time_lag_ms"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil {
		t.Fatalf("cluster status -o json: exit %d, %q (%v)", r.code, r.stdout, err)
	}
	leaders := 0
	for _, m := range st.Members {
		if m.Role != "leader" {
			continue
		}
		leaders++
		if m.LagMs == nil || time.Duration(*m.LagMs)*time.Millisecond < outage/2 {
			t.Errorf("leader %s log_time_lag_ms = %v, want about the %v outage", m.Name, m.LagMs, outage)
		}
	}
	if leaders != 1 {
		t.Errorf("cluster status shows %d leaders, want 1: %s", leaders, r.stdout)
	}
}
