package node_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// gather collects one node's series by name.
func gather(t *testing.T, n *node.Node) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(n.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value is a gauge's or counter's value, or a histogram's sample count.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok || len(mf.GetMetric()) != 1 {
		t.Fatalf("series %s: missing or not one series (%v)", name, mf)
	}
	m := mf.GetMetric()[0]
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	t.Fatalf("series %s: not a gauge, counter or histogram", name)
	return 0
}

// TestCollector: a three-node cluster on data dirs (the WAL), some writes
// and a snapshot; every node's collector then reports what happened, and
// its series pass Prometheus's lint.
func TestCollector(t *testing.T) {
	dir := t.TempDir()
	c := testcluster.StartWithConfig(t, 3, func(i int, cfg *node.Config) {
		cfg.InMemoryStore = false
		cfg.DataDir = filepath.Join(dir, cfg.Name)
		// kvd's default timeouts: testcluster's 50ms are shorter than an
		// fsync on a busy disk, and a leader change would fail a Put.
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLease = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
		cfg.TickInterval = 100 * time.Millisecond
	})
	l := c.MustLeader()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	kv := kvpb.NewKVClient(c.Conn(l))
	const keys = 20
	var kvBytes int
	var last uint64
	for i := range keys {
		k, v := fmt.Sprintf("key-%02d", i), fmt.Sprintf("value-%d", i)
		resp, err := kv.Put(ctx, &kvpb.PutRequest{Key: []byte(k), Value: []byte(v)})
		if err != nil {
			t.Fatalf("Put(%q) = %v", k, err)
		}
		kvBytes += len(k) + len(v)
		last = resp.GetHeader().GetAppliedIndex()
	}
	if _, err := c.Node(l).Snapshot(ctx); err != nil {
		t.Fatalf("Snapshot() = %v", err)
	}
	for i := range c.N() {
		if err := c.Node(i).WaitApplied(ctx, last); err != nil {
			t.Fatalf("node %d WaitApplied(%d) = %v", i, last, err)
		}
	}

	leaders := 0.0
	for i := range c.N() {
		n := c.Node(i)
		mfs := gather(t, n)
		check := func(name string, ok func(float64) bool, want string) {
			t.Helper()
			if v := value(t, mfs, name); !ok(v) {
				t.Errorf("%s: %s = %v, want %s", n.Name(), name, v, want)
			}
		}
		atLeast := func(min float64) func(float64) bool { return func(v float64) bool { return v >= min } }
		equal := func(want float64) func(float64) bool { return func(v float64) bool { return v == want } }

		check("kvd_raft_term", atLeast(1), ">= 1")
		check("kvd_raft_applied_index", atLeast(float64(last)), fmt.Sprintf(">= %d", last))
		check("kvd_raft_commit_index", atLeast(float64(last)), fmt.Sprintf(">= %d", last))
		check("kvd_raft_last_log_index", atLeast(float64(last)), fmt.Sprintf(">= %d", last))
		check("kvd_raft_has_leader", equal(1), "1")
		check("kvd_raft_leader_changes_total", atLeast(1), ">= 1")
		check("kvd_raft_log_append_seconds", atLeast(1), "some appends")
		check("kvd_raft_log_fsync_seconds", atLeast(1), "some fsyncs (WAL)")
		check("kvd_kv_keys", equal(keys), fmt.Sprint(keys))
		check("kvd_kv_bytes", equal(float64(kvBytes)), fmt.Sprint(kvBytes))
		check("kvd_sessions", equal(0), "0")
		check("kvd_locks_held", equal(0), "0")
		// Each put is one change in every member's watch history.
		check("kvd_watch_history_events", atLeast(keys), fmt.Sprintf(">= %d", keys))
		check("kvd_watch_history_bytes", atLeast(float64(kvBytes)), fmt.Sprintf(">= %d", kvBytes))
		check("kvd_watchers", equal(0), "0")
		// No whole-cluster outage: log time keeps up with the wall clock.
		check("kvd_log_time_offset_seconds", func(v float64) bool { return v > -5 && v < 1 }, "within (-5s, 1s)")
		leaders += value(t, mfs, "kvd_raft_is_leader")
		if i == l {
			check("kvd_snapshot_persist_seconds", equal(1), "1 snapshot")
			check("kvd_snapshot_size_bytes", atLeast(float64(kvBytes)), fmt.Sprintf(">= %d (the keys and values)", kvBytes))
		}
		if err := n.Ready(); err != nil {
			t.Errorf("%s: Ready() = %v, want nil", n.Name(), err)
		}

		problems, err := testutil.CollectAndLint(n.Collector())
		if err != nil {
			t.Fatalf("CollectAndLint: %v", err)
		}
		for _, p := range problems {
			t.Errorf("%s: lint: %s: %s", n.Name(), p.Metric, p.Text)
		}
	}
	if leaders != 1 {
		t.Errorf("kvd_raft_is_leader summed over the cluster = %v, want 1", leaders)
	}
}

// TestReadyWithoutLeader: a member that knows no leader is not ready, and
// a stopped one is not either.
func TestReadyWithoutLeader(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	f := (l + 1) % 3
	n := c.Node(f)
	if err := n.Ready(); err != nil {
		t.Fatalf("%s: Ready() = %v before the partition, want nil", n.Name(), err)
	}
	c.Disconnect(f)
	deadline := time.Now().Add(10 * time.Second)
	for n.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s cut off from both peers still ready after 10s", n.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Stop(f)
	if err := n.Ready(); err == nil {
		t.Fatalf("%s: Ready() after Stop = nil, want an error", n.Name())
	}
}
