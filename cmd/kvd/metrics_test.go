package main

import (
	"bytes"
	"math"
	"net"
	"slices"
	"strings"
	"testing"

	metrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRaftSink: the keys raft reports come out renamed, in seconds, with
// their peer label; raft's per-peer key names, gauges and unknown keys are
// dropped.
func TestRaftSink(t *testing.T) {
	s := newRaftSink()
	peer := []metrics.Label{{Name: "peer_id", Value: "n2"}}
	s.AddSample([]string{"raft", "commitTime"}, 2.5)
	s.AddSample([]string{"raft", "commitTime"}, 7.5)
	s.AddSampleWithLabels([]string{"raft", "replication", "appendEntries", "rpc"}, 4, peer)
	s.AddSample([]string{"raft", "replication", "appendEntries", "rpc", "n2"}, 4) // the older per-peer name
	s.IncrCounter([]string{"raft", "state", "candidate"}, 1)
	s.IncrCounter([]string{"raft", "apply"}, 1) // not kept
	s.SetGauge([]string{"raft", "peers"}, 3)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "kvd_raft_commit_seconds":
				h := m.GetHistogram()
				if h.GetSampleCount() != 2 || math.Abs(h.GetSampleSum()-0.010) > 1e-9 {
					t.Errorf("kvd_raft_commit_seconds: count %d, sum %v; want 2, 0.010", h.GetSampleCount(), h.GetSampleSum())
				}
			case "kvd_raft_replication_append_entries_seconds":
				if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "peer_id" || l[0].GetValue() != "n2" ||
					m.GetHistogram().GetSampleCount() != 1 {
					t.Errorf("kvd_raft_replication_append_entries_seconds: labels %v, count %d; want peer_id=n2, 1",
						l, m.GetHistogram().GetSampleCount())
				}
			case "kvd_raft_elections_total":
				if v := m.GetCounter().GetValue(); v != 1 {
					t.Errorf("kvd_raft_elections_total = %v, want 1", v)
				}
			}
		}
	}
	want := []string{"kvd_raft_commit_seconds", "kvd_raft_elections_total", "kvd_raft_replication_append_entries_seconds"}
	if !slices.Equal(names, want) {
		t.Errorf("series = %v, want %v", names, want)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestRaftKeysAreNamedByConvention: every kept key has a kvd_raft_ name in
// seconds or _total.
func TestRaftKeysAreNamedByConvention(t *testing.T) {
	for key, rs := range raftKeys {
		unit := "_seconds"
		if rs.counter {
			unit = "_total"
		}
		if !strings.HasPrefix(rs.name, "kvd_raft_") || !strings.HasSuffix(rs.name, unit) || rs.help == "" {
			t.Errorf("%s -> %q: want kvd_raft_..%s and a help text", key, rs.name, unit)
		}
	}
}

func TestMetricsAddrInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var stderr bytes.Buffer
	code := run([]string{"--name", "n1", "--data-dir", t.TempDir(), "--client-addr", freePort(t), "--peer-addr", freePort(t),
		"--metrics-addr", l.Addr().String(), "--log-level", "error"}, &bytes.Buffer{}, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "kvd: listen on metrics address") {
		t.Errorf("run = %d, stderr %q; want 1 and \"kvd: listen on metrics address ...\"", code, stderr.String())
	}
}
