package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
)

func TestFormatKey(t *testing.T) {
	tests := []struct {
		i, size int
		want    string
	}{
		{7, 8, "00000007"},
		{12345678, 8, "12345678"},
		{123456789, 4, "6789"},
		{0, 1, "0"},
	}
	for _, tt := range tests {
		if got := string(formatKey(nil, tt.i, tt.size)); got != tt.want {
			t.Errorf("formatKey(%d, %d) = %q, want %q", tt.i, tt.size, got, tt.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 1000; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := summarize(d)
	want := latencyStats{Mean: 500.5, P50: 500, P90: 900, P99: 990, P999: 999, Max: 1000}
	if got != want {
		t.Errorf("summarize(1..1000 ms) = %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (latencyStats{}) {
		t.Errorf("summarize(nil) = %+v, want zero", got)
	}
}

// TestBenchWorkloads runs every workload briefly against an in-process
// cluster and checks that the JSON report is clean and counts right.
func TestBenchWorkloads(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	tc := kvctlCluster(t)
	tests := []struct {
		name string
		args []string
		want int64 // successful requests
	}{
		{"put", []string{"bench", "put", "--clients", "4", "--conns", "2", "--total", "40"}, 40},
		{"get linearizable", []string{"bench", "get", "--clients", "4", "--total", "40", "--key-space", "10"}, 40},
		{"get stale", []string{"bench", "get", "--consistency", "stale", "--clients", "4", "--total", "40", "--key-space", "10"}, 40},
		{"lock", []string{"bench", "lock", "--lockers", "3", "--total", "12"}, 12},
		{"keepalive", []string{"bench", "keepalive", "--clients", "4", "--total", "20"}, 20},
		{"memoize", []string{"bench", "memoize", "--clients", "4", "--total", "40", "--hit-ratio", "0.5", "--key-space", "5"}, 40},
		{"memoize local", []string{"bench", "memoize", "--clients", "2", "--total", "20", "--hit-ratio", "1", "--key-space", "5", "--reads", "local"}, 20},
		{"memoize near", []string{"bench", "memoize", "--clients", "2", "--total", "20", "--hit-ratio", "1", "--key-space", "5", "--near-cache", "1m"}, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := kvctl(t, tc, "", append(tt.args, "-o", "json")...)
			if code != exitOK {
				t.Fatalf("kvctl %v: exit %d, stderr %s", tt.args, code, errOut)
			}
			var rep benchReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("kvctl %v: output %q: %v", tt.args, out, err)
			}
			if !rep.Clean || rep.Errors != 0 || rep.Requests != tt.want {
				t.Errorf("kvctl %v: clean %v, errors %d, requests %d; want clean, 0 errors, %d requests",
					tt.args, rep.Clean, rep.Errors, rep.Requests, tt.want)
			}
			if rep.RequestsPerSec <= 0 || rep.Latency.P50 <= 0 || rep.Latency.Max < rep.Latency.P99 {
				t.Errorf("kvctl %v: implausible figures %+v", tt.args, rep)
			}
			// The in-process members share this test's process, so only
			// that both figures were taken is checked here.
			if c := rep.CPU; c == nil || c.Members != len(tc.Endpoints) || c.Servers <= 0 || c.Kvctl <= 0 {
				t.Errorf("kvctl %v: cpu per request %+v, want servers and kvctl > 0 over %d members", tt.args, c, len(tc.Endpoints))
			}
		})
	}
	t.Run("duration", func(t *testing.T) {
		code, out, errOut := kvctl(t, tc, "", "bench", "get", "--consistency", "stale", "--key-space", "5", "--duration", "300ms", "-o", "json")
		if code != exitOK {
			t.Fatalf("exit %d, stderr %s", code, errOut)
		}
		var rep benchReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Requests == 0 || !rep.Clean {
			t.Errorf("report %q (%v): want a clean run with requests", out, err)
		}
	})
	t.Run("cpuprofile", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "cpu.pb")
		code, _, errOut := kvctl(t, tc, "", "bench", "get", "--consistency", "stale", "--key-space", "5", "--total", "200", "--cpuprofile", path)
		if code != exitOK {
			t.Fatalf("exit %d, stderr %s", code, errOut)
		}
		// A CPU profile is a gzipped protobuf.
		if b, err := os.ReadFile(path); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("profile %s: %d bytes, %v; want a gzipped pprof profile", path, len(b), err)
		}
		if code, _, errOut := kvctl(t, tc, "", "bench", "get", "--total", "1", "--key-space", "5", "--cpuprofile", filepath.Join(path, "no", "such")); code == exitOK || !strings.Contains(errOut, "--cpuprofile") {
			t.Errorf("unwritable --cpuprofile: exit %d (%s), want a failure naming --cpuprofile", code, errOut)
		}
	})
	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"bench", "put", "--clients", "0"},
			{"bench", "put", "--clients", "2", "--conns", "3"},
			{"bench", "get", "--consistency", "eventual"},
			{"bench", "memoize", "--hit-ratio", "2"},
			{"bench", "memoize", "--reads", "eventual"},
			{"bench", "put", "extra"},
		} {
			if code, _, _ := kvctl(t, tc, "", args...); code != exitUsage {
				t.Errorf("kvctl %v: exit %d, want %d", args, code, exitUsage)
			}
		}
	})
}

// failingWorkload fails every other request with NOT_FOUND.
// failingWorkload fails every other request of the whole run (counted
// across workers: how the run splits between workers varies).
type failingWorkload struct {
	putWorkload
	n *atomic.Int64
}

func (f failingWorkload) op(ctx context.Context, b *bench, w *worker) error {
	if f.n.Add(1)%2 == 0 {
		return client.ErrNotFound
	}
	return nil
}

// TestBenchErrorsAreNotClean: a run with failed requests exits 1, and its
// report says it is not clean and counts the errors by kind.
func TestBenchErrorsAreNotClean(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	tc := kvctlCluster(t)
	var out, errb bytes.Buffer
	a := &app{endpoints: strings.Join(tc.Endpoints, ","), output: "json", timeout: 5 * time.Second, stdout: &out, stderr: &errb}
	f := &benchFlags{clients: 2, conns: 1, total: 10, keySize: 8, valSize: 8, keySpace: 10}
	err := runBench(t.Context(), a, f, failingWorkload{n: new(atomic.Int64)})
	if exitCode(err) != exitFailed {
		t.Fatalf("runBench = %v (exit %d), want exit %d", err, exitCode(err), exitFailed)
	}
	var rep benchReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report %q: %v", out.String(), err)
	}
	if rep.Clean || rep.Errors != 5 || rep.Requests != 5 || rep.ErrorsByKind["not found"] != 5 {
		t.Errorf("report %+v: want not clean, 5 errors (not found), 5 requests", rep)
	}
	var text bytes.Buffer
	rep.print(&text)
	if !strings.HasPrefix(text.String(), "NOT CLEAN") {
		t.Errorf("text report %q does not start with NOT CLEAN", text.String())
	}
}

// BenchmarkSummarize: the report of a run of a million requests.
func BenchmarkSummarize(b *testing.B) {
	d := make([]time.Duration, 1_000_000)
	src := make([]time.Duration, len(d))
	for i := range src {
		src[i] = time.Duration((i*7919)%1_000_003) * time.Microsecond
	}
	b.ReportAllocs()
	for b.Loop() {
		copy(d, src)
		summarize(d)
	}
}
