package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/testcluster"
)

// kvctlCluster starts an in-process cluster and points kvctl at it.
func kvctlCluster(t *testing.T) *testcluster.Cluster {
	t.Helper()
	tc := testcluster.Start(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := tc.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	old := testDialer
	testDialer = tc.Dialer
	t.Cleanup(func() { testDialer = old })
	return tc
}

// kvctl runs kvctl against tc with stdin and returns the exit code and output.
func kvctl(t *testing.T, tc *testcluster.Cluster, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"--endpoints", strings.Join(tc.Endpoints, ","), "--timeout", "5s"}, args...), strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestKVCommands(t *testing.T) {
	tc := kvctlCluster(t)
	tests := []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		wantOut  string // exact stdout when not "*"
	}{
		{"put", "", []string{"put", "greeting", "hello"}, exitOK, "*"},
		{"get", "", []string{"get", "greeting"}, exitOK, "hello\n"},
		{"get stale", "", []string{"get", "greeting", "--consistency", "stale"}, exitOK, "hello\n"},
		{"get value only", "", []string{"get", "greeting", "--print-value-only"}, exitOK, "hello"},
		{"put from stdin keeps every byte", "line\n\x00\xff", []string{"put", "bin"}, exitOK, "*"},
		{"get binary", "", []string{"get", "bin", "--print-value-only"}, exitOK, "line\n\x00\xff"},
		{"get missing", "", []string{"get", "nope"}, exitNotFound, ""},
		{"cas mismatch", "", []string{"put", "greeting", "x", "--expect-version", "5"}, exitFailed, ""},
		{"cas create only", "", []string{"put", "fresh", "x", "--expect-version", "0"}, exitOK, "*"},
		{"cas create exists", "", []string{"put", "fresh", "y", "--expect-version", "0"}, exitFailed, ""},
		{"add", "", []string{"add", "n", "5"}, exitOK, "5\n"},
		{"add negative", "", []string{"add", "n", "--", "-7"}, exitOK, "-2\n"},
		{"add not integer", "", []string{"add", "greeting", "1"}, exitFailed, ""},
		{"add bad delta", "", []string{"add", "n", "x"}, exitUsage, ""},
		{"put a/1", "", []string{"put", "a/1", "one"}, exitOK, "*"},
		{"put a/2", "", []string{"put", "a/2", "two"}, exitOK, "*"},
		{"put a/3", "", []string{"put", "a/3", "three"}, exitOK, "*"},
		{"ls prefix", "", []string{"ls", "a/"}, exitOK, "a/1\tone\na/2\ttwo\na/3\tthree\n"},
		{"ls keys only", "", []string{"ls", "a/", "--keys-only"}, exitOK, "a/1\na/2\na/3\n"},
		{"ls page", "", []string{"ls", "a/", "--limit", "1", "--start-after", "a/1", "--keys-only"}, exitOK, "a/2\n"},
		{"del", "", []string{"del", "a/2"}, exitOK, "1\n"},
		{"del again", "", []string{"del", "a/2"}, exitOK, "0\n"},
		{"ls after del", "", []string{"ls", "a/", "--keys-only"}, exitOK, "a/1\na/3\n"},
		{"bad fence", "", []string{"put", "k", "v", "--fence", "nocolon"}, exitUsage, ""},
		{"fence not held", "", []string{"put", "k", "v", "--fence", "L:99"}, exitFailed, ""},
		{"too many args", "", []string{"get", "a", "b"}, exitUsage, ""},
		{"unknown flag", "", []string{"get", "a", "--bogus"}, exitUsage, ""},
		{"bad output", "", []string{"get", "a", "-o", "yaml"}, exitUsage, ""},
		{"bad consistency", "", []string{"get", "a", "--consistency", "eventual"}, exitUsage, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := kvctl(t, tc, tt.stdin, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("kvctl %v: exit %d, want %d; stderr %q", tt.args, code, tt.wantCode, errOut)
			}
			if tt.wantOut != "*" && out != tt.wantOut {
				t.Errorf("kvctl %v: stdout %q, want %q", tt.args, out, tt.wantOut)
			}
			if code != exitOK && !strings.HasPrefix(errOut, "kvctl: ") {
				t.Errorf("kvctl %v: stderr %q, want it to start with \"kvctl: \"", tt.args, errOut)
			}
		})
	}
}

func TestKVCommandsJSON(t *testing.T) {
	tc := kvctlCluster(t)
	if code, _, errOut := kvctl(t, tc, "\xff\xfe", "put", "bin"); code != 0 {
		t.Fatalf("put: exit %d: %s", code, errOut)
	}
	if code, _, errOut := kvctl(t, tc, "", "put", "text", "hé", "--ttl", "1h"); code != 0 {
		t.Fatalf("put: exit %d: %s", code, errOut)
	}

	var got struct {
		Header struct {
			AppliedIndex uint64 `json:"applied_index"`
			LogTimeNs    int64  `json:"log_time_ns"`
		} `json:"header"`
		KV struct {
			Key         string `json:"key"`
			Value       string `json:"value"`
			ValueBase64 string `json:"value_base64"`
			Version     uint64 `json:"version"`
			ExpiresAtNs int64  `json:"expires_at_ns"`
			ExpiresAt   string `json:"expires_at"`
		} `json:"kv"`
	}
	code, out, errOut := kvctl(t, tc, "", "get", "text", "-o", "json")
	if code != 0 {
		t.Fatalf("get -o json: exit %d: %s", code, errOut)
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get -o json: %v in %q", err, out)
	}
	if got.KV.Key != "text" || got.KV.Value != "hé" || got.KV.Version != 1 || got.KV.ExpiresAtNs == 0 || got.KV.ExpiresAt == "" || got.Header.AppliedIndex == 0 {
		t.Errorf("get -o json = %s, want key text, value hé, version 1, an expiry and a header", out)
	}

	got.KV.Value = ""
	code, out, _ = kvctl(t, tc, "", "get", "bin", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
		t.Fatalf("get bin -o json: exit %d, %q", code, out)
	}
	if b, _ := base64.StdEncoding.DecodeString(got.KV.ValueBase64); string(b) != "\xff\xfe" || got.KV.Value != "" {
		t.Errorf("get bin -o json = %s, want value_base64 of ff fe and no value", out)
	}

	code, out, _ = kvctl(t, tc, "", "add", "n", "3", "-o", "json")
	var add struct {
		Value int64 `json:"new_value"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &add) != nil || add.Value != 3 {
		t.Errorf("add -o json: exit %d, %q, want value 3", code, out)
	}

	var list struct {
		KVs []struct {
			Key string `json:"key"`
		} `json:"kvs"`
		More bool `json:"more"`
	}
	code, out, _ = kvctl(t, tc, "", "ls", "-o", "json", "--limit", "2")
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("ls -o json: exit %d, %q", code, out)
	}
	if len(list.KVs) != 2 || list.KVs[0].Key != "bin" || !list.More {
		t.Errorf("ls --limit 2 -o json = %s, want bin, n and more", out)
	}
	// --limit 0 pages through everything.
	code, out, _ = kvctl(t, tc, "", "ls", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.KVs) != 3 || list.More {
		t.Errorf("ls -o json = %s, want 3 keys and no more", out)
	}

	code, out, _ = kvctl(t, tc, "", "del", "n", "-o", "json")
	if code != 0 || strings.TrimSpace(out) == "" || !strings.Contains(out, `"deleted":1`) {
		t.Errorf("del -o json: exit %d, %q, want deleted 1", code, out)
	}
}

func TestSessionCommands(t *testing.T) {
	tc := kvctlCluster(t)
	code, out, errOut := kvctl(t, tc, "", "session", "create", "--ttl", "10s", "--name", "job")
	if code != 0 {
		t.Fatalf("session create: exit %d: %s", code, errOut)
	}
	id := strings.TrimSpace(out)
	if _, err := strconv.ParseUint(id, 10, 64); err != nil {
		t.Fatalf("session create printed %q, want an id", out)
	}
	code, out, errOut = kvctl(t, tc, "", "session", "get", id)
	if code != 0 || !strings.Contains(out, "name:    job") || !strings.Contains(out, "ttl:     10s") {
		t.Errorf("session get: exit %d, %q %s", code, out, errOut)
	}
	code, out, errOut = kvctl(t, tc, "", "session", "keepalive", id, "--once", "-o", "json")
	var ka struct {
		Session struct {
			ID          uint64 `json:"id"`
			ExpiresAtNs int64  `json:"expires_at_ns"`
		} `json:"session"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &ka) != nil || strconv.FormatUint(ka.Session.ID, 10) != id || ka.Session.ExpiresAtNs == 0 {
		t.Errorf("session keepalive --once -o json: exit %d, %q %s", code, out, errOut)
	}
	if code, out, errOut = kvctl(t, tc, "", "session", "close", id); code != 0 || out != "OK\n" {
		t.Errorf("session close: exit %d, %q %s", code, out, errOut)
	}
	if code, _, _ = kvctl(t, tc, "", "session", "get", id); code != exitNotFound {
		t.Errorf("session get after close: exit %d, want %d", code, exitNotFound)
	}
	if code, _, _ = kvctl(t, tc, "", "session", "keepalive", id, "--once"); code != exitNotFound {
		t.Errorf("session keepalive after close: exit %d, want %d", code, exitNotFound)
	}
	if code, _, _ = kvctl(t, tc, "", "session", "get", "abc"); code != exitUsage {
		t.Errorf("session get abc: exit %d, want %d", code, exitUsage)
	}
}

func TestClusterCommands(t *testing.T) {
	tc := kvctlCluster(t)
	// Client addresses reach the member list through the log: wait for all.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, out, _ := kvctl(t, tc, "", "cluster", "members")
		if !strings.Contains(out, " - ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members without a client address after 5s:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, out, errOut := kvctl(t, tc, "", "cluster", "status")
	if code != 0 {
		t.Fatalf("cluster status: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "NAME") || strings.Count(out, "leader") != 1 || strings.Count(out, "follower") != 2 {
		t.Errorf("cluster status =\n%s\nwant a header, one leader and two followers", out)
	}

	code, out, errOut = kvctl(t, tc, "", "cluster", "members", "-o", "json")
	var members struct {
		Members []struct {
			Name       string `json:"name"`
			ClientAddr string `json:"client_addr"`
			Leader     bool   `json:"leader"`
		} `json:"members"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &members) != nil || len(members.Members) != 3 {
		t.Fatalf("cluster members -o json: exit %d, %q %s", code, out, errOut)
	}

	if code, out, errOut = kvctl(t, tc, "", "cluster", "snapshot", "--endpoint", tc.Endpoints[1]); code != 0 || !strings.HasPrefix(out, "snapshot at index ") {
		t.Errorf("cluster snapshot: exit %d, %q %s", code, out, errOut)
	}

	// A stopped member shows as unreachable; the command still succeeds.
	leader := tc.MustLeader()
	down := (leader + 1) % 3
	tc.Stop(down)
	code, out, errOut = kvctl(t, tc, "", "cluster", "status", "--member-timeout", "300ms", "-o", "json")
	var status struct {
		Members []struct {
			Name      string `json:"name"`
			Reachable bool   `json:"reachable"`
			Role      string `json:"role"`
			Header    struct {
				LogTime string `json:"log_time"`
			} `json:"header"`
			LagMs  *int64 `json:"log_time_lag_ms"`
			Leader bool   `json:"leader"`
		} `json:"members"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &status) != nil || len(status.Members) != 3 {
		t.Fatalf("cluster status -o json with a member down: exit %d, %q %s", code, out, errOut)
	}
	for _, m := range status.Members {
		if want := m.Name != tc.Name(down); m.Reachable != want {
			t.Errorf("member %s reachable = %v, want %v", m.Name, m.Reachable, want)
		}
		if m.Reachable {
			if _, err := time.Parse(time.RFC3339Nano, m.Header.LogTime); err != nil {
				t.Errorf("member %s header.log_time %q: %v", m.Name, m.Header.LogTime, err)
			}
			if (m.LagMs != nil) != (m.Role == "leader") {
				t.Errorf("member %s (%s) log_time_lag_ms = %v, want one on the leader's row only", m.Name, m.Role, m.LagMs)
			}
		}
	}
	code, out, _ = kvctl(t, tc, "", "cluster", "status", "--member-timeout", "300ms")
	if code != 0 || !strings.Contains(out, "unreachable") {
		t.Errorf("cluster status with a member down: exit %d,\n%s\nwant an unreachable row", code, out)
	}
}
