package main

import (
	"strings"
	"sync"

	metrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
)

// hashicorp/raft reports through go-metrics' process-wide sink
// (github.com/hashicorp/go-metrics/compat, which forwards to
// armon/go-metrics unless built with the hashicorpmetrics tag). kvd installs
// that sink here, in cmd/kvd, because a kvd process runs one member; tests
// that start many in-process members never install it.
//
// Choice: not go-metrics' own Prometheus sink. It names series after
// raft's keys (kvd_raft_commitTime), in milliseconds, as summaries that
// cannot be aggregated across members, and turns raft's older per-peer
// keys into one series name per peer. raftSink keeps the few series worth
// watching, renamed by the Prometheus conventions (snake case, seconds,
// histograms, _total on counters), and drops every other key.

// raftSeries is one go-metrics key that raftSink keeps.
type raftSeries struct {
	name, help string
	labels     []string // the go-metrics labels it keeps, in order
	counter    bool     // a count; otherwise a sample in milliseconds
}

// raftKeys maps go-metrics keys (joined with ".") to kvd series.
var raftKeys = map[string]raftSeries{
	"raft.commitTime": {name: "kvd_raft_commit_seconds",
		help: "Leader: time from appending an entry to its commit by a quorum."},
	"raft.replication.appendEntries.rpc": {name: "kvd_raft_replication_append_entries_seconds", labels: []string{"peer_id"},
		help: "Leader: round trip of an AppendEntries with entries to a follower."},
	"raft.replication.heartbeat": {name: "kvd_raft_replication_heartbeat_seconds", labels: []string{"peer_id"},
		help: "Leader: round trip of a heartbeat to a follower."},
	"raft.leader.lastContact": {name: "kvd_raft_leader_last_contact_seconds",
		help: "Leader: time since it last heard from a quorum, sampled at each check of its lease."},
	"raft.rpc.appendEntries": {name: "kvd_raft_rpc_append_entries_seconds",
		help: "Follower: time to handle an AppendEntries from the leader, its log append included."},
	"raft.fsm.applyBatch": {name: "kvd_raft_fsm_apply_batch_seconds",
		help: "Time to apply a batch of committed entries to the state."},
	"raft.state.candidate": {name: "kvd_raft_elections_total", counter: true,
		help: "Elections this member started (it became a candidate)."},
	"raft.transition.heartbeat_timeout": {name: "kvd_raft_heartbeat_timeouts_total", counter: true,
		help: "Times this member heard nothing from a leader for a heartbeat timeout."},
}

// raftSink is a go-metrics sink and a Prometheus collector of raftKeys.
type raftSink struct {
	// Filled by newRaftSink, read-only after: the vectors are safe for
	// concurrent use.
	hist map[string]*prometheus.HistogramVec
	cnt  map[string]*prometheus.CounterVec
}

var _ metrics.MetricSink = (*raftSink)(nil)

// raftBuckets span a local disk write (100µs) to an election (~3s).
var raftBuckets = prometheus.ExponentialBuckets(0.0001, 2, 16)

func newRaftSink() *raftSink {
	s := &raftSink{hist: map[string]*prometheus.HistogramVec{}, cnt: map[string]*prometheus.CounterVec{}}
	for key, rs := range raftKeys {
		if rs.counter {
			s.cnt[key] = prometheus.NewCounterVec(prometheus.CounterOpts{Name: rs.name, Help: rs.help}, rs.labels)
		} else {
			s.hist[key] = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: rs.name, Help: rs.help, Buckets: raftBuckets}, rs.labels)
		}
	}
	return s
}

// raftMetrics installs the sink as go-metrics' global once per process and
// returns it.
var raftMetrics = sync.OnceValue(func() *raftSink {
	s := newRaftSink()
	conf := metrics.DefaultConfig("") // no service prefix: keys arrive as raft emits them
	conf.EnableHostname = false
	conf.EnableRuntimeMetrics = false // the Go collector covers the runtime
	metrics.NewGlobal(conf, s)
	return s
})

// labelValues are the values of rs's labels among ls ("" when absent).
func labelValues(rs raftSeries, ls []metrics.Label) []string {
	vals := make([]string, len(rs.labels))
	for i, name := range rs.labels {
		for _, l := range ls {
			if l.Name == name {
				vals[i] = l.Value
			}
		}
	}
	return vals
}

func (s *raftSink) AddSample(key []string, val float32) { s.AddSampleWithLabels(key, val, nil) }

func (s *raftSink) AddSampleWithLabels(key []string, val float32, ls []metrics.Label) {
	k := strings.Join(key, ".")
	if h, ok := s.hist[k]; ok {
		h.WithLabelValues(labelValues(raftKeys[k], ls)...).Observe(float64(val) / 1000)
	}
}

func (s *raftSink) IncrCounter(key []string, val float32) { s.IncrCounterWithLabels(key, val, nil) }

func (s *raftSink) IncrCounterWithLabels(key []string, val float32, ls []metrics.Label) {
	k := strings.Join(key, ".")
	if c, ok := s.cnt[k]; ok && val >= 0 {
		c.WithLabelValues(labelValues(raftKeys[k], ls)...).Add(float64(val))
	}
}

// Gauges and keys are not kept: the node reads raft's state at each
// scrape instead (node.Node.Collector).
func (s *raftSink) SetGauge([]string, float32)                            {}
func (s *raftSink) SetGaugeWithLabels([]string, float32, []metrics.Label) {}
func (s *raftSink) EmitKey([]string, float32)                             {}

func (s *raftSink) Describe(ch chan<- *prometheus.Desc) {
	for _, h := range s.hist {
		h.Describe(ch)
	}
	for _, c := range s.cnt {
		c.Describe(ch)
	}
}

func (s *raftSink) Collect(ch chan<- prometheus.Metric) {
	for _, h := range s.hist {
		h.Collect(ch)
	}
	for _, c := range s.cnt {
		c.Collect(ch)
	}
}
