package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/internal/proccluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// metricsCluster is a three-node cluster of real kvd processes, each with
// --metrics-addr.
type metricsCluster struct {
	*proccluster.Cluster
	metrics []string // each node's metrics address, by node
}

func startMetricsCluster(t *testing.T) *metricsCluster {
	t.Helper()
	kvd, _ := proccluster.Binaries(t)
	dir := t.TempDir()
	cl := proccluster.NewCluster(kvd, dir, t.Logf)
	ports := proccluster.FreePorts(t, 9)
	mc := &metricsCluster{Cluster: cl}
	var initial []string
	for i := range 3 {
		initial = append(initial, fmt.Sprintf("n%d=127.0.0.1:%d", i+1, ports[3*i+1]))
	}
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		client, peer := fmt.Sprintf("127.0.0.1:%d", ports[3*i]), fmt.Sprintf("127.0.0.1:%d", ports[3*i+1])
		metrics := fmt.Sprintf("127.0.0.1:%d", ports[3*i+2])
		dataDir := filepath.Join(dir, name)
		cl.AddNode(name, client, peer, dataDir, []string{
			"--name", name, "--data-dir", dataDir, "--client-addr", client, "--peer-addr", peer,
			"--initial-cluster", strings.Join(initial, ","), "--metrics-addr", metrics,
		})
		mc.metrics = append(mc.metrics, metrics)
	}
	t.Cleanup(func() {
		for _, nd := range cl.Nodes {
			nd.Kill()
		}
		if t.Failed() {
			cl.DumpLogs()
		}
	})
	for _, nd := range cl.Nodes {
		if err := nd.Start(); err != nil {
			t.Fatalf("start %s: %v", nd.Name, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := cl.WaitLeader(ctx); err != nil {
		t.Fatalf("no leader: %v", err)
	}
	return mc
}

// httpGet returns the status code and body of GET url.
func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return resp.StatusCode, string(b)
}

// pollUntil polls cond every 100ms until it holds, or fails the test after d.
func pollUntil(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s; last: %s", d, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMetricsEndpoints: every node serves /healthz, /readyz and /metrics
// in Prometheus's text format (promtool's lint finds nothing, where
// promtool is installed) and no profiler; a node left without a quorum
// stays healthy but turns not ready.
func TestMetricsEndpoints(t *testing.T) {
	skipShort(t)
	mc := startMetricsCluster(t)
	for i, addr := range mc.metrics {
		name := mc.Nodes[i].Name
		if code, body := httpGet(t, "http://"+addr+"/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("%s /healthz = %d %q, want 200 \"ok\"", name, code, body)
		}
		pollUntil(t, 10*time.Second, name+" /readyz to answer 200", func() (bool, string) {
			code, body := httpGet(t, "http://"+addr+"/readyz")
			return code == 200 && body == "ready\n", fmt.Sprintf("%d %q", code, body)
		})
		if code, _ := httpGet(t, "http://"+addr+"/debug/pprof/"); code != http.StatusNotFound {
			t.Errorf("%s /debug/pprof/ = %d, want 404 (the profiler is never on the metrics port)", name, code)
		}
		code, body := httpGet(t, "http://"+addr+"/metrics")
		if code != 200 {
			t.Fatalf("%s /metrics = %d", name, code)
		}
		for _, series := range []string{"kvd_raft_term ", "kvd_kv_keys ", "kvd_raft_log_fsync_seconds_count ", "go_goroutines ", "process_resident_memory_bytes "} {
			if !strings.Contains(body, "\n"+series) {
				t.Errorf("%s /metrics has no %q line", name, series)
			}
		}
		if promtool, err := exec.LookPath("promtool"); err == nil {
			cmd := exec.Command(promtool, "check", "metrics")
			cmd.Stdin = strings.NewReader(body)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s: promtool check metrics: %v\n%s", name, err, out)
			}
		} else {
			t.Log("promtool not installed (apt-get install prometheus): /metrics not linted")
		}
	}

	// Two of three gone: the survivor knows no leader.
	mc.Nodes[1].Kill()
	mc.Nodes[2].Kill()
	pollUntil(t, 15*time.Second, "n1 /readyz to answer 503 without a quorum", func() (bool, string) {
		code, body := httpGet(t, "http://"+mc.metrics[0]+"/readyz")
		return code == http.StatusServiceUnavailable && strings.HasPrefix(body, "not ready: "), fmt.Sprintf("%d %q", code, body)
	})
	if code, _ := httpGet(t, "http://"+mc.metrics[0]+"/healthz"); code != 200 {
		t.Errorf("n1 /healthz without a quorum = %d, want 200 (the process is up)", code)
	}
}

// prometheus runs a real Prometheus server scraping targets every second
// and returns its address. It is stopped at cleanup.
func startPrometheus(t *testing.T, bin string, targets []string) string {
	t.Helper()
	dir := t.TempDir()
	var quoted []string
	for _, tg := range targets {
		quoted = append(quoted, strconv.Quote(tg))
	}
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: kvd
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	confPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", proccluster.FreePorts(t, 1)[0])
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+confPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("--- prometheus log\n%s", b)
			}
		}
	})
	pollUntil(t, 30*time.Second, "prometheus to become ready", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("prometheus exited: %v", cmd.ProcessState)
		default:
		}
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return addr
}

// sample is one series of an instant query's answer.
type sample struct {
	labels map[string]string
	value  float64
}

// promQuery asks Prometheus's HTTP API for an instant vector.
func promQuery(t *testing.T, addr, q string) ([]sample, error) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("query %q: %w", q, err)
	}
	if body.Status != "success" || body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: status %q, type %q: %s", q, body.Status, body.Data.ResultType, body.Error)
	}
	var out []sample
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %v: %w", q, r.Value, err)
		}
		out = append(out, sample{r.Metric, v})
	}
	return out, nil
}

// TestPrometheusScrapesCluster: a real Prometheus scrapes a three-node
// cluster after a workload that touches every family of series, and its
// HTTP API answers each family with values that match the workload.
func TestPrometheusScrapesCluster(t *testing.T) {
	skipShort(t)
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (Debian: apt-get install prometheus; .ci/run installs it); skipping the real-Prometheus test")
	}
	mc := startMetricsCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	leader, err := mc.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(leader.ClientAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kvc, lc, cc := kvpb.NewKVClient(conn), kvpb.NewLockClient(conn), kvpb.NewCacheClient(conn)
	sc := kvpb.NewSessionClient(conn)

	// Keys.
	const keys = 25
	kvBytes := 0
	for i := range keys {
		k, v := fmt.Sprintf("m/%02d", i), strings.Repeat("v", i)
		if _, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte(k), Value: []byte(v)}); err != nil {
			t.Fatalf("Put(%q) = %v", k, err)
		}
		kvBytes += len(k) + len(v)
	}
	// Locks: b queues behind a, a releases, b holds; a's stale token is
	// refused as a fence.
	var sessions [2]uint64
	for i := range sessions {
		r, err := sc.Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 300_000, Name: "metrics-test"})
		if err != nil {
			t.Fatalf("Session.Create = %v", err)
		}
		sessions[i] = r.GetSession().GetId()
	}
	a, b := sessions[0], sessions[1]
	first, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 1}, Name: []byte("L")})
	if err != nil || !first.GetAcquired() {
		t.Fatalf("Acquire(a) = %v, %v", first, err)
	}
	granted := make(chan error, 1)
	go func() {
		r, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: b, Seq: 1}, Name: []byte("L"), WaitMs: 30_000})
		if err == nil && !r.GetAcquired() {
			err = fmt.Errorf("not acquired: %v", r)
		}
		granted <- err
	}()
	pollUntil(t, 10*time.Second, "b to queue for L", func() (bool, string) {
		r, err := lc.Get(ctx, &kvpb.GetLockRequest{Name: []byte("L")})
		return err == nil && len(r.GetLock().GetWaiters()) == 1, fmt.Sprint(r, err)
	})
	if _, err := lc.Release(ctx, &kvpb.ReleaseRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 2}, Name: []byte("L"), Token: first.GetToken()}); err != nil {
		t.Fatalf("Release(a) = %v", err)
	}
	if err := <-granted; err != nil {
		t.Fatalf("waiting Acquire(b) = %v", err)
	}
	_, err = kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("fenced"), Value: []byte("x"), Fence: &kvpb.Fence{Lock: []byte("L"), Token: first.GetToken()}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Put fenced by a's stale token = %v, want FailedPrecondition", err)
	}
	// Cache: a miss, a set, a hit.
	if r, err := cc.Get(ctx, &kvpb.CacheGetRequest{Key: []byte("c")}); err != nil || r.GetState() != kvpb.CacheState_CACHE_STATE_MISS {
		t.Fatalf("Cache.Get(c) = %v, %v; want MISS", r, err)
	}
	if _, err := cc.Set(ctx, &kvpb.CacheSetRequest{Key: []byte("c"), Value: []byte("cached"), TtlMs: 300_000}); err != nil {
		t.Fatalf("Cache.Set(c) = %v", err)
	}
	if r, err := cc.Get(ctx, &kvpb.CacheGetRequest{Key: []byte("c")}); err != nil || r.GetState() != kvpb.CacheState_CACHE_STATE_FRESH {
		t.Fatalf("Cache.Get(c) = %v, %v; want FRESH", r, err)
	}
	// A Raft snapshot on the leader.
	if _, err := kvpb.NewClusterClient(conn).Snapshot(ctx, &kvpb.SnapshotRequest{}); err != nil {
		t.Fatalf("Cluster.Snapshot = %v", err)
	}
	st, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.WaitApplied(ctx, st.AppliedIndex); err != nil {
		t.Fatal(err)
	}

	prom := startPrometheus(t, bin, mc.metrics)
	pollUntil(t, 30*time.Second, "prometheus to scrape all three nodes", func() (bool, string) {
		r, err := promQuery(t, prom, `up{job="kvd"} == 1`)
		return err == nil && len(r) == 3, fmt.Sprint(r, err)
	})

	// expect polls a query until every answer satisfies ok and there are
	// want answers (scrapes lag the workload by up to a second).
	expect := func(q string, want int, ok func(float64) bool, desc string) {
		t.Helper()
		pollUntil(t, 20*time.Second, fmt.Sprintf("%s: want %d series, each %s", q, want, desc), func() (bool, string) {
			r, err := promQuery(t, prom, q)
			if err != nil || len(r) != want {
				return false, fmt.Sprint(r, err)
			}
			for _, s := range r {
				if !ok(s.value) {
					return false, fmt.Sprint(r)
				}
			}
			return true, ""
		})
	}
	eq := func(v float64) func(float64) bool { return func(x float64) bool { return x == v } }
	atLeast := func(v float64) func(float64) bool { return func(x float64) bool { return x >= v } }
	leaderOnly := fmt.Sprintf(`{instance=%q}`, mc.metrics[indexOf(mc, leader)])

	// Raft.
	expect(`kvd_raft_term`, 3, atLeast(1), ">= 1")
	expect(`count(count_values("term", kvd_raft_term))`, 1, eq(1), "one term on every node")
	expect(`sum(kvd_raft_is_leader)`, 1, eq(1), "= 1")
	expect(`kvd_raft_has_leader`, 3, eq(1), "= 1")
	expect(`kvd_raft_applied_index`, 3, atLeast(float64(st.AppliedIndex)), fmt.Sprintf(">= %d", st.AppliedIndex))
	expect(`kvd_raft_commit_index`, 3, atLeast(float64(st.AppliedIndex)), fmt.Sprintf(">= %d", st.AppliedIndex))
	expect(`kvd_raft_last_log_index`, 3, atLeast(float64(st.AppliedIndex)), fmt.Sprintf(">= %d", st.AppliedIndex))
	expect(`kvd_raft_leader_changes_total`, 3, atLeast(1), ">= 1")
	expect(`kvd_raft_log_append_seconds_count`, 3, atLeast(1), ">= 1 append")
	expect(`kvd_raft_log_fsync_seconds_count`, 3, atLeast(1), ">= 1 fsync")
	expect(`histogram_quantile(0.99, sum by (le) (kvd_raft_log_fsync_seconds_bucket))`, 1, func(x float64) bool { return x > 0 && x < 10 }, "in (0, 10s)")
	expect(`kvd_raft_commit_seconds_count`+leaderOnly, 1, atLeast(float64(keys)), fmt.Sprintf(">= %d commits on the leader", keys))
	expect(`count(kvd_raft_replication_append_entries_seconds_count`+leaderOnly+`)`, 1, eq(2), "the leader's two peers")
	expect(`sum(kvd_raft_elections_total)`, 1, atLeast(1), ">= 1 (the first)")
	// Log time keeps up with the wall clock (no outage).
	expect(`kvd_log_time_offset_seconds`, 3, func(x float64) bool { return x > -5 && x < 1 }, "in (-5s, 1s)")
	expect(`time() - kvd_log_time_seconds`, 3, func(x float64) bool { return x > -5 && x < 120 }, "in (-5s, 120s)")
	// Snapshot.
	expect(`kvd_snapshot_persist_seconds_count`+leaderOnly, 1, atLeast(1), ">= 1 on the leader")
	expect(`kvd_snapshot_size_bytes`+leaderOnly, 1, atLeast(float64(kvBytes)), fmt.Sprintf(">= %d (its keys and values)", kvBytes))
	// State.
	expect(`kvd_kv_keys`, 3, eq(keys), fmt.Sprint(keys))
	expect(`kvd_kv_bytes`, 3, eq(float64(kvBytes)), fmt.Sprint(kvBytes))
	expect(`kvd_sessions`, 3, eq(2), "2")
	// Locks.
	expect(`kvd_locks_held`, 3, eq(1), "1")
	expect(`kvd_lock_waiters`, 3, eq(0), "0")
	expect(`sum(kvd_lock_acquire_wait_seconds_count)`, 1, eq(1), "1 queued acquire")
	expect(`kvd_lock_handoff_seconds_count`, 3, eq(1), "1 handoff, seen by every member")
	expect(`sum(kvd_lock_fence_refusals_total{op="write"})`, 1, eq(1), "1 stale fence")
	// Cache.
	expect(`sum(kvd_cache_hits_total)`, 1, eq(1), "1")
	expect(`sum(kvd_cache_misses_total)`, 1, eq(1), "1")
	expect(`sum(kvd_cache_stale_served_total)`, 1, eq(0), "0")
	expect(`sum(kvd_cache_fill_waits_total)`, 1, eq(0), "0")
	expect(`kvd_cache_fills_total`, 3, eq(1), "1 (replicated)")
	expect(`kvd_cache_evictions_total`, 3, eq(0), "0")
	expect(`kvd_cache_entries`, 3, eq(1), "1")
	expect(`kvd_cache_bytes`, 3, eq(float64(len("c")+len("cached"))), "7")
	expect(`kvd_cache_fill_waiters`, 3, eq(0), "0")
	// Disk full.
	expect(`kvd_disk_full_refusals_total`, 3, eq(0), "0")
	// gRPC, by method and code.
	expect(`sum(kvd_grpc_server_handled_total{grpc_service="kvd.v1.KV",grpc_method="Put",grpc_code="OK"})`, 1, eq(keys), fmt.Sprint(keys))
	expect(`sum(kvd_grpc_server_handled_total{grpc_method="Put",grpc_code="FailedPrecondition"})`, 1, eq(1), "1")
	expect(`sum(kvd_grpc_server_handling_seconds_count{grpc_method="Put"})`, 1, eq(keys+1), fmt.Sprint(keys+1))
	expect(`histogram_quantile(0.5, sum by (le) (kvd_grpc_server_handling_seconds_bucket{grpc_method="Put"}))`, 1,
		func(x float64) bool { return x > 0 && x < 5 }, "in (0, 5s)")

	// No series carries a key, lock or session: no label value names one.
	r, err := promQuery(t, prom, `{job="kvd"}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range r {
		for k, v := range s.labels {
			if strings.HasPrefix(v, "m/") || v == "L" || v == "c" || v == "fenced" {
				t.Errorf("series %v: label %s=%q names a key, lock or cache entry", s.labels, k, v)
			}
		}
	}
	t.Logf("Prometheus answered %d series from the three nodes", len(r))

	checkDashboard(t, prom)
}

// checkDashboard runs every query of deploy/grafana/kvd.json against
// Prometheus (with its variables set to match everything) and checks that
// every kvd series it names exists.
func checkDashboard(t *testing.T, prom string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "kvd.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/grafana/kvd.json: %v", err)
	}
	vars := strings.NewReplacer("$instance", ".*", "$job", ".*", "$__rate_interval", "1m")
	names := map[string]bool{}
	exprs := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs++
			if _, err := promQuery(t, prom, vars.Replace(tg.Expr)); err != nil {
				t.Errorf("dashboard panel %q: %v", p.Title, err)
			}
			for _, n := range metricName.FindAllString(tg.Expr, -1) {
				names[strings.TrimSuffix(n, "_bucket")] = true
			}
		}
	}
	if exprs < 20 {
		t.Fatalf("deploy/grafana/kvd.json has %d queries; want the dashboard's panels", exprs)
	}
	for n := range names {
		if r, err := promQuery(t, prom, fmt.Sprintf(`count({__name__=~"%s|%s_count"})`, n, n)); err != nil || len(r) != 1 {
			t.Errorf("dashboard names %s, which Prometheus does not have: %v %v", n, r, err)
		}
	}
}

var metricName = regexp.MustCompile(`\bkvd_[a-z_]+`)

func indexOf(mc *metricsCluster, nd *proccluster.Node) int {
	for i, n := range mc.Nodes {
		if n == nd {
			return i
		}
	}
	return -1
}
