package node

import (
	"errors"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/types"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are what a node measures as it runs. What can be read from raft
// and the fsm is read at each scrape instead (collector): nothing here is
// updated per applied entry.
type metrics struct {
	leaderChanges    prometheus.Counter
	logAppend        prometheus.Histogram
	logFsync         prometheus.Histogram
	snapshotPersist  prometheus.Histogram
	snapshotSize     prometheus.Gauge
	snapshotRestore  prometheus.Histogram
	lockHandoff      prometheus.Histogram
	diskFullRefusals prometheus.Counter
}

// diskBuckets span a page-cache write (100µs) to a stalled disk (~3s).
var diskBuckets = prometheus.ExponentialBuckets(0.0001, 2, 16)

func newMetrics() *metrics {
	return &metrics{
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvd_raft_leader_changes_total",
			Help: "Times this member saw a new leader (another member, or a new term).",
		}),
		logAppend: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvd_raft_log_append_seconds",
			Help:    "Time to store a batch of entries in the Raft log, its fsyncs included (leader and followers).",
			Buckets: diskBuckets,
		}),
		logFsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvd_raft_log_fsync_seconds",
			Help:    "Time of one fsync of a Raft log segment file (the WAL log store only).",
			Buckets: diskBuckets,
		}),
		snapshotPersist: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvd_snapshot_persist_seconds",
			Help:    "Time to write a Raft snapshot of the state to the data dir, fsync and rename included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		snapshotSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvd_snapshot_size_bytes",
			Help: "Size of the last Raft snapshot this member wrote.",
		}),
		snapshotRestore: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvd_snapshot_restore_seconds",
			Help:    "Time to replace the state with a Raft snapshot's (at start, or one sent by the leader).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		lockHandoff: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kvd_lock_handoff_seconds",
			Help: "Log time a lock stood free before it was granted to the head of its line: 0 after a release, " +
				"the lock-delay after a break, the lag of the expiry behind the holder's session deadline. " +
				"Every member observes the same grants.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		diskFullRefusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvd_disk_full_refusals_total",
			Help: "Requests this member refused because its data dir's disk is full.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.leaderChanges, m.logAppend, m.logFsync, m.snapshotPersist,
		m.snapshotSize, m.snapshotRestore, m.lockHandoff, m.diskFullRefusals}
}

// NoteDiskFullRefusal counts one request refused because the data dir's
// disk is full (kvd_disk_full_refusals_total). Safe from any goroutine.
func (n *Node) NoteDiskFullRefusal() { n.metrics.diskFullRefusals.Inc() }

// Collector is the node's metrics for a Prometheus registry: what it
// measures as it runs (log appends and fsyncs, snapshots, leader changes,
// lock handoffs, disk-full refusals) and what it reads from raft and the
// fsm at each scrape (term, indexes, leadership, keys, sessions, locks,
// cache, log time). Every series is named kvd_...; none has a label per
// key, lock or session. docs/metrics.md lists them.
//
// Register it in one registry per node. Scrapes before Start or after
// Shutdown report only the measured series.
func (n *Node) Collector() prometheus.Collector { return &collector{n: n} }

type collector struct{ n *Node }

func gauge(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }

// The series read at scrape time.
var (
	descTerm          = gauge("kvd_raft_term", "Raft term this member is in.")
	descCommit        = gauge("kvd_raft_commit_index", "Index of the last Raft entry this member knows to be committed.")
	descApplied       = gauge("kvd_raft_applied_index", "Index of the last Raft entry applied to this member's state.")
	descLastLog       = gauge("kvd_raft_last_log_index", "Index of the last entry in this member's Raft log.")
	descIsLeader      = gauge("kvd_raft_is_leader", "1 when this member is the leader and has taken office, else 0.")
	descHasLeader     = gauge("kvd_raft_has_leader", "1 when this member knows a leader, else 0.")
	descLogTime       = gauge("kvd_log_time_seconds", "Log time of this member's state (unix seconds): the replicated clock every expiry is judged by.")
	descLogTimeOffset = gauge("kvd_log_time_offset_seconds",
		"Log time now minus this member's wall clock, in seconds. Negative when log time runs behind: after a whole-cluster outage, by about its length.")

	descKeys         = gauge("kvd_kv_keys", "Keys in the state.")
	descKVBytes      = gauge("kvd_kv_bytes", "Bytes of keys and values in the state.")
	descSessions     = gauge("kvd_sessions", "Client sessions in the state.")
	descLocksHeld    = gauge("kvd_locks_held", "Locks held.")
	descLockWaiters  = gauge("kvd_lock_waiters", "Sessions queued for locks, all lines together.")
	descCacheEntries = gauge("kvd_cache_entries", "Cache entries (with a value, a fill lease or waiters).")
	descCacheBytes   = gauge("kvd_cache_bytes", "Bytes of cache keys and values, bounded by kvd_cache_max_bytes.")
	descCacheMax     = gauge("kvd_cache_max_bytes", "The cache's byte bound (--cache-max-bytes of the last command that set it).")
	descCacheWaiters = gauge("kvd_cache_fill_waiters", "Sessions waiting for another session's fill of a cache entry (single flight).")
	descFillLeases   = gauge("kvd_cache_fill_leases", "Fill leases held.")

	descWatchEvents = gauge("kvd_watch_history_events", "Changes this member keeps in its watch history (bounded by --watch-history-events).")
	descWatchBytes  = gauge("kvd_watch_history_bytes",
		"Estimated bytes of the changes in this member's watch history (bounded by --watch-history-bytes; old values included).")
	descWatchers = gauge("kvd_watchers", "Watch streams open on this member.")

	descCacheFills = prometheus.NewDesc("kvd_cache_fills_total",
		"Values stored into the cache (fills and sets), cluster-wide: replicated, the same on every member.", nil, nil)
	descCacheStaleStores = prometheus.NewDesc("kvd_cache_fills_rejected_total",
		"Fills refused because their lease had passed on, cluster-wide.", nil, nil)
	descCacheEvictions = prometheus.NewDesc("kvd_cache_evictions_total",
		"Cache values dropped to keep within the byte bound, cluster-wide.", nil, nil)
	descLeasesGranted = prometheus.NewDesc("kvd_cache_fill_leases_granted_total",
		"Fill leases granted, cluster-wide.", nil, nil)
	descLeasesExpired = prometheus.NewDesc("kvd_cache_fill_leases_expired_total",
		"Fill leases that expired before their holder stored a value, cluster-wide.", nil, nil)
)

var scrapeDescs = []*prometheus.Desc{
	descTerm, descCommit, descApplied, descLastLog, descIsLeader, descHasLeader, descLogTime, descLogTimeOffset,
	descKeys, descKVBytes, descSessions, descLocksHeld, descLockWaiters,
	descCacheEntries, descCacheBytes, descCacheMax, descCacheWaiters, descFillLeases,
	descWatchEvents, descWatchBytes, descWatchers,
	descCacheFills, descCacheStaleStores, descCacheEvictions, descLeasesGranted, descLeasesExpired,
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range scrapeDescs {
		ch <- d
	}
	for _, m := range c.n.metrics.collectors() {
		m.Describe(ch)
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	for _, m := range n.metrics.collectors() {
		m.Collect(ch)
	}
	n.mu.Lock()
	running := n.serving && !n.stopped
	n.mu.Unlock()
	if !running {
		return
	}
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	cnt := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	b := func(ok bool) float64 {
		if ok {
			return 1
		}
		return 0
	}

	r := n.raft
	g(descTerm, float64(r.CurrentTerm()))
	g(descCommit, float64(r.CommitIndex()))
	g(descApplied, float64(n.adapter.appliedIndex()))
	g(descLastLog, float64(r.LastIndex()))
	g(descIsLeader, b(n.IsLeader()))
	_, leader := r.LeaderWithID()
	g(descHasLeader, b(leader != ""))

	st := n.fsm.Stats()
	if st.LogTime != 0 {
		g(descLogTime, float64(st.LogTime)/1e9)
		g(descLogTimeOffset, float64(n.logClock()-n.wallNow())/1e9)
	}
	g(descKeys, float64(st.Keys))
	g(descKVBytes, float64(st.KVBytes))
	g(descSessions, float64(st.Sessions))
	g(descLocksHeld, float64(st.LocksHeld))
	g(descLockWaiters, float64(st.LockWaiters))
	g(descCacheEntries, float64(st.CacheEntries))
	g(descCacheBytes, float64(st.CacheBytes))
	g(descCacheMax, float64(st.CacheMaxBytes))
	g(descCacheWaiters, float64(st.CacheWaiters))
	g(descFillLeases, float64(st.FillLeases))
	if h := n.watch; h != nil {
		_, _, events, bytes := h.HistoryRange()
		g(descWatchEvents, float64(events))
		g(descWatchBytes, float64(bytes))
		g(descWatchers, float64(h.Watchers()))
	}
	cnt(descCacheFills, st.CacheStores)
	cnt(descCacheStaleStores, st.CacheStaleStoresRejected)
	cnt(descCacheEvictions, st.CacheEvictions)
	cnt(descLeasesGranted, st.FillLeasesGranted)
	cnt(descLeasesExpired, st.FillLeasesExpired)
}

// logClock is this member's reading of log time now: the leader's stamp;
// elsewhere the log time of the last apply plus the time elapsed since,
// which is what this member would anchor on if it took office now.
func (n *Node) logClock() int64 {
	if e := n.currentEpoch(); e != nil {
		select {
		case <-e.ready:
			return n.stamp(e)
		default:
		}
	}
	lt := n.adapter.lastLogTime()
	if la := n.adapter.lastApply.Load(); la != 0 {
		if d := n.clock() - la; d > 0 {
			lt += d
		}
	}
	return lt
}

// watchLeaders counts the leaders raft reports (kvd_raft_leader_changes_total)
// until the node stops. It registers its observer before it returns.
func (n *Node) watchLeaders() {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	n.goFunc(func() {
		defer n.raft.DeregisterObserver(obs)
		var lastID raft.ServerID
		var lastTerm uint64
		seen := func(id raft.ServerID) {
			// The term tells a re-election of the same member from a
			// repeated observation.
			term := n.raft.CurrentTerm()
			if id != "" && (id != lastID || term != lastTerm) {
				n.metrics.leaderChanges.Inc()
				lastID, lastTerm = id, term
			}
		}
		// A leader elected before the observer was registered.
		_, id := n.raft.LeaderWithID()
		seen(id)
		for {
			select {
			case <-n.ctx.Done():
				return
			case o := <-ch:
				seen(o.Data.(raft.LeaderObservation).LeaderID)
			}
		}
	})
}

// timedLogStore times each append to the Raft log. It keeps the store's
// IsMonotonic answer, which changes what raft does after a snapshot
// restore.
type timedLogStore struct {
	raft.LogStore
	h prometheus.Observer
}

func (s timedLogStore) StoreLog(l *raft.Log) error {
	defer s.since(time.Now())
	return s.LogStore.StoreLog(l)
}

func (s timedLogStore) StoreLogs(ls []*raft.Log) error {
	defer s.since(time.Now())
	return s.LogStore.StoreLogs(ls)
}

func (s timedLogStore) since(t time.Time) { s.h.Observe(time.Since(t).Seconds()) }

func (s timedLogStore) IsMonotonic() bool {
	m, ok := s.LogStore.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

var _ raft.MonotonicLogStore = timedLogStore{}

// timedVFS times every fsync of the WAL's segment files.
type timedVFS struct {
	types.VFS
	h prometheus.Observer
}

func (v timedVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	f, err := v.VFS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	return timedFile{f, v.h}, nil
}

func (v timedVFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := v.VFS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return timedFile{f, v.h}, nil
}

type timedFile struct {
	types.WritableFile
	h prometheus.Observer
}

func (f timedFile) Sync() error {
	start := time.Now()
	err := f.WritableFile.Sync()
	f.h.Observe(time.Since(start).Seconds())
	return err
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Why Ready refuses.
var (
	errNotRunning   = errors.New("node is not running")
	errNoLeader     = errors.New("no leader known")
	errTakingOffice = errors.New("this member is leader but has not yet taken office")
)

// Ready reports whether the member can serve requests: it runs, it knows a
// leader to forward writes to, and if that leader is itself, it has taken
// office (barrier applied, time anchored). The error says what is missing.
func (n *Node) Ready() error {
	n.mu.Lock()
	running := n.serving && !n.stopped
	n.mu.Unlock()
	if !running {
		return errNotRunning
	}
	name, _ := n.Leader()
	switch {
	case name == "":
		return errNoLeader
	case name == n.cfg.Name && !n.IsLeader():
		return errTakingOffice
	}
	return nil
}
