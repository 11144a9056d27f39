// Command jepsen-lite starts a real kvd cluster (3 or 5 processes on
// 127.0.0.1, every network path through a proxy it controls), runs
// concurrent workloads through the Go client while a nemesis injects faults,
// records every operation, heals, and checks the history.
//
// It is a module of its own; from test/jepsen-lite:
//
//	go run .                                                   # smoke run
//	go run . --nodes 5 --duration 30m --seed 42 --out results/
//	go run . --self-test                                       # planted bugs must be caught
//
// It exits 0 only when every checker passed.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/pki"
	"github.com/kvdproject/kvd/internal/proccluster"
	"github.com/kvdproject/kvd/internal/tmpfs"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// defaultDuration is the smoke run's: enough for >= 30 faults and
// >= 20,000 operations on two cores.
const defaultDuration = 75 * time.Second

// diskBytes is the size of each node's own filesystem when the disk-full
// fault is on: room for a few 4 MiB log segments, snapshots and the reserve
// the member keeps free.
const diskBytes = 128 << 20

// Config is one run's settings (the flags).
type Config struct {
	Nodes    int
	Duration time.Duration
	Seed     uint64
	Out      string
	Kvd      string // prebuilt kvd binary; built when empty
	Bug      string // planted bug to enable (kvdbugs build)
	Kinds    []string
	Rate     float64 // operations per second over all workers; 0: as fast as they go
	// TLS: TLS on every link (certificates from kvd's pki) and auth on;
	// workers sign in as a non-admin user (see Security).
	TLS bool
	Log io.Writer // progress; nil: quiet
	// RSSBound fails the memory checker when a node's resident memory,
	// sampled every second, goes over it (0: defaultRSSBound).
	RSSBound int64
}

// defaultRSSBound is the memory checker's bound on every node's RSS, with
// hostile clients included: a Go heap under the smoke run's state (a few
// MiB of keys, the hostile client's 7 MiB of large values, a cache bounded
// well below it) and what one connection may keep unread, with room for
// the garbage collector's doubling.
const defaultRSSBound = 256 << 20

// Summary is what a run found; it is written as summary.json.
type Summary struct {
	Seed      uint64                        `json:"seed"`
	Nodes     int                           `json:"nodes"`
	Duration  string                        `json:"duration"`
	Bug       string                        `json:"bug,omitempty"`
	Wall      string                        `json:"wall"`
	Ops       int                           `json:"ops"`
	OpsByType map[string]map[Outcome]int    `json:"ops_by_type"`
	Faults    []Fault                       `json:"faults"`
	ByKind    map[string]int                `json:"faults_by_kind"`
	Verdicts  []*Verdict                    `json:"verdicts"`
	Final     []NodeState                   `json:"final_nodes"`
	Pass      bool                          `json:"pass"`
	Out       string                        `json:"out"`
	Recovery  map[string]map[string]float64 `json:"recovery_ms"` // kind -> min/max/mean
}

func main() {
	var (
		cfg      Config
		seed     int64
		selfTest bool
		runs     int
		quiet    bool
	)
	flag.IntVar(&cfg.Nodes, "nodes", 3, "cluster size: 3 or 5")
	flag.DurationVar(&cfg.Duration, "duration", defaultDuration, "how long workloads and faults run")
	flag.Int64Var(&seed, "seed", 0, "seed of the fault schedule and the workloads (0: from the clock)")
	flag.StringVar(&cfg.Out, "out", "", "directory for history, summary and visualizations (default a new temp dir)")
	flag.StringVar(&cfg.Kvd, "kvd", "", "use this kvd binary instead of building ./cmd/kvd")
	faults := flag.String("faults", "", "comma-separated fault kinds to use (default all: "+strings.Join(faultKinds, ",")+")")
	flag.BoolVar(&cfg.TLS, "tls", false, "TLS on every link and auth on: workers sign in as a non-admin user, the harness with root's client certificate")
	flag.BoolVar(&selfTest, "self-test", false, "build kvd with planted bugs (tag kvdbugs) and check that each is caught")
	flag.IntVar(&runs, "self-test-runs", 10, "runs per planted bug in --self-test")
	flag.BoolVar(&quiet, "quiet", false, "no progress output")
	flag.Float64Var(&cfg.Rate, "rate", 0, "limit operations per second over all workers (0: none; long runs keep their history smaller)")
	rssMiB := flag.Int64("rss-bound-mib", defaultRSSBound>>20, "fail when a node's resident memory goes over this many MiB")
	check := flag.String("check", "", "only check this history.jsonl of an earlier run (convergence is not re-checked)")
	registerBugFlag(&cfg)
	flag.Parse()
	cfg.RSSBound = *rssMiB << 20
	if *check != "" {
		ops, err := ReadHistory(*check)
		if err != nil {
			fmt.Fprintf(os.Stderr, "jepsen-lite: %v\n", err)
			os.Exit(1)
		}
		s := &Summary{Ops: len(ops), OpsByType: countOps(ops), Out: filepath.Dir(*check), Pass: true,
			Verdicts: checkAll(ops, filepath.Dir(*check))}
		for _, v := range s.Verdicts {
			s.Pass = s.Pass && v.Pass
		}
		PrintSummary(os.Stdout, s)
		if !s.Pass {
			os.Exit(1)
		}
		return
	}
	if cfg.Nodes != 3 && cfg.Nodes != 5 {
		fmt.Fprintln(os.Stderr, "jepsen-lite: --nodes must be 3 or 5")
		os.Exit(2)
	}
	if *faults != "" {
		cfg.Kinds = strings.Split(*faults, ",")
		for _, k := range cfg.Kinds {
			if !slices.Contains(faultKinds, k) {
				fmt.Fprintf(os.Stderr, "jepsen-lite: --faults: unknown kind %q (known: %s)\n", k, strings.Join(faultKinds, ","))
				os.Exit(2)
			}
		}
	}
	cfg.Seed = uint64(seed)
	if seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	if !quiet {
		cfg.Log = os.Stderr
	}
	if selfTest {
		if err := SelfTest(cfg, runs); err != nil {
			fmt.Fprintf(os.Stderr, "jepsen-lite: self-test: %v\n", err)
			os.Exit(1)
		}
		return
	}
	s, err := Run(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "jepsen-lite: %v\n", err)
		os.Exit(1)
	}
	PrintSummary(os.Stdout, s)
	if !s.Pass {
		os.Exit(1)
	}
}

func logf(w io.Writer) func(string, ...any) {
	if w == nil {
		return func(string, ...any) {}
	}
	var mu sync.Mutex
	start := time.Now()
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
}

// Run performs one run and checks it.
func Run(cfg Config) (*Summary, error) {
	started := time.Now()
	lg := logf(cfg.Log)
	if cfg.Out == "" {
		d, err := os.MkdirTemp("", "jepsen-lite-")
		if err != nil {
			return nil, err
		}
		cfg.Out = d
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	if cfg.Kvd == "" {
		bin := filepath.Join(cfg.Out, "bin")
		os.MkdirAll(bin, 0o755)
		var tags []string
		if cfg.Bug != "" {
			tags = append(tags, "kvdbugs")
		}
		lg("building kvd %v", tags)
		k, err := proccluster.Build(bin, tags...)
		if err != nil {
			return nil, err
		}
		cfg.Kvd = k
	}
	clusterDir := filepath.Join(cfg.Out, "cluster")
	os.RemoveAll(clusterDir)
	extra := []string{
		"--log-level", "warn",
		"--snapshot-threshold", "1024",
		"--trailing-logs", "256",
		"--snapshot-interval", "2s",
	}
	extra = append(extra, hostileArgs()...)
	if cfg.RSSBound == 0 {
		cfg.RSSBound = defaultRSSBound
	}
	var env []string
	if cfg.Bug != "" {
		env = append(env, "KVD_TEST_BUG="+kvdBug(cfg.Bug))
	}
	var certs *pki.DevFiles
	if cfg.TLS {
		var names []string
		for i := range cfg.Nodes {
			names = append(names, nodeName(i))
		}
		var err error
		if certs, err = pki.DevCerts(filepath.Join(cfg.Out, "certs"), names, "root"); err != nil {
			return nil, err
		}
	}
	hc := HarnessConfig{Kvd: cfg.Kvd, Dir: clusterDir, Nodes: cfg.Nodes, ExtraArgs: extra, Env: env, Certs: certs, Logf: lg}
	kinds := cfg.Kinds
	if len(kinds) == 0 {
		kinds = faultKinds
	}
	if slices.Contains(kinds, "disk-full") {
		// Each data dir on a filesystem of its own, with small log
		// segments so that it holds several.
		hc.DiskBytes = diskBytes
		hc.ExtraArgs = append(slices.Clone(extra), "--wal-segment-bytes", fmt.Sprint(4<<20))
	}
	h, err := NewHarness(hc)
	if errors.Is(err, tmpfs.ErrNotPermitted) {
		lg("disk-full: skipped: %v", err)
		kinds = slices.DeleteFunc(slices.Clone(kinds), func(k string) bool { return k == "disk-full" })
		if len(kinds) == 0 {
			return nil, fmt.Errorf("--faults disk-full: %w", err)
		}
		cfg.Kinds = kinds
		hc.DiskBytes, hc.ExtraArgs = 0, extra
		h, err = NewHarness(hc)
	}
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if err := h.StartAll(); err != nil {
		return nil, err
	}
	if err := h.WaitUp(); err != nil {
		return nil, err
	}
	hist := NewHistory()
	wenv := NewEnv(hist, h.Endpoints())
	wenv.SetRate(cfg.Rate)
	if certs != nil {
		if wenv.Security, err = enableAuth(certs, h.Endpoints()); err != nil {
			return nil, fmt.Errorf("turn auth on: %w", err)
		}
		lg("TLS on every link, auth on: workers sign in as %q, the harness as root (client certificate)", wenv.Security.User)
	}
	probe, err := wenv.NewAdminClient()
	if err != nil {
		return nil, err
	}
	defer probe.Close()
	nm := &Nemesis{H: h, Hist: hist, Rng: rand.New(rand.NewPCG(cfg.Seed, 1<<40)), Probe: probe, Logf: lg,
		Kinds: cfg.Kinds, HoldMin: 700 * time.Millisecond, HoldMax: 2000 * time.Millisecond, Env: wenv}
	if !nm.waitRecovered(context.Background(), 30*time.Second) {
		if err := h.Err(); err != nil {
			return nil, err
		}
		h.DumpLogs()
		return nil, errors.New("cluster did not accept a write within 30s of starting")
	}
	lg("cluster of %d up (seed %d); running workloads for %v; out %s", cfg.Nodes, cfg.Seed, cfg.Duration, cfg.Out)

	// Watchers, one starting on each node, from just before the run.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	startAt, err := probe.Put(sctx, []byte("wt-start"), []byte("x"))
	scancel()
	if err != nil {
		return nil, fmt.Errorf("watchers' start write: %w", err)
	}
	watchers := StartWatchers(wenv, cfg.Nodes, 1000, startAt.GetKv().GetModIndex())
	defer watchers.Stop()
	bctx, bcancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = InitBank(bctx, wenv, probe)
	bcancel()
	if err != nil {
		return nil, fmt.Errorf("bank accounts: %w", err)
	}

	// Workloads and nemesis.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration)
	defer cancel()
	type spec struct {
		w Worker
		n int
	}
	specs := []spec{
		{RegisterWorker, 20}, {CounterWorker, 3}, {TTLWorker, 2},
		{LockWorker(true), 2}, {LockWorker(false), 2},
		{MemoWorker, 3}, {MemoizeWorker, 3}, {WatchWriter, 2},
		{ElectionCandidate, 3}, {ElectionObserver, 1},
		{BankTransfer, 2}, {BankReader, 1},
	}
	var wg sync.WaitGroup
	id := 0
	for _, s := range specs {
		for i := 0; i < s.n; i++ {
			wg.Add(1)
			go func(w Worker, id int) {
				defer wg.Done()
				w(ctx, wenv, id, rand.New(rand.NewPCG(cfg.Seed, uint64(id))))
			}(s.w, id)
			id++
		}
	}
	nmDone := make(chan struct{})
	go func() {
		defer close(nmDone)
		nm.Run(ctx)
	}()
	rssDone := make(chan struct{})
	go func() {
		defer close(rssDone)
		sampleRSS(ctx, h, hist, cfg.RSSBound, time.Second)
	}()
	progress := time.NewTicker(15 * time.Second)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-h.Failed():
			lg("a node failed; stopping the run")
			cancel()
		case <-progress.C:
			lg("%d ops, %d faults", hist.Len(), nm.Count())
		}
	}
	progress.Stop()
	<-nmDone
	<-rssDone
	if !waitTimeout(&wg, 20*time.Second) {
		lg("workers did not stop within 20s; their pending ops count as unknown")
	}
	if err := h.Err(); err != nil {
		return nil, fmt.Errorf("run stopped after %d ops and %d faults (logs in %s): %w", hist.Len(), len(nm.Faults), clusterDir, err)
	}
	lg("workloads stopped: %d ops, %d faults; healing, then kill-all and restart", hist.Len(), len(nm.Faults))

	// Heal everything, kill all, restart: durability.
	h.HealNetwork()
	for i := 0; i < cfg.Nodes; i++ {
		if err := h.FreeDisk(i); err != nil {
			lg("free %s's disk: %v", nodeName(i), err)
		}
	}
	for i := 0; i < cfg.Nodes; i++ {
		h.Node(i).Resume()
		h.SetClockOffset(i, 0)
	}
	nm.waitRecovered(context.Background(), 20*time.Second)
	if !watchers.CaughtUp(wenv.watchWritten.Load(), 30*time.Second) {
		lg("watchers did not deliver every acknowledged write within 30s of healing; the rest is checked as far as they got")
	}
	watchers.Stop()
	ensureMembers(probe, h, lg)
	h.KillAll()
	if err := h.StartAll(); err != nil {
		return nil, err
	}
	if !nm.waitRecovered(context.Background(), 30*time.Second) {
		lg("cluster did not recover within 30s after the final restart")
	}
	if err := h.WaitUp(); err != nil {
		return nil, fmt.Errorf("final restart (logs in %s): %w", clusterDir, err)
	}
	finalReads(wenv, probe, time.Minute)
	states, tries := converge(h, 30*time.Second)

	// Check.
	ops := hist.Ops()
	lg("checking %d ops", len(ops))
	s := &Summary{
		Seed: cfg.Seed, Nodes: cfg.Nodes, Duration: cfg.Duration.String(), Bug: cfg.Bug,
		Ops: len(ops), OpsByType: countOps(ops), Faults: nm.Faults, ByKind: map[string]int{},
		Final: states, Out: cfg.Out, Recovery: map[string]map[string]float64{},
	}
	for _, f := range nm.Faults {
		s.ByKind[f.Kind]++
		r := s.Recovery[f.Kind]
		if r == nil {
			r = map[string]float64{"min": 1e18}
			s.Recovery[f.Kind] = r
		}
		ms := float64(f.RecoveryMs)
		r["min"] = min(r["min"], ms)
		r["max"] = max(r["max"], ms)
		r["mean"] += ms // a sum until divided below
		r["n"]++
		if !f.Recovered {
			r["unrecovered"]++
		}
	}
	for _, r := range s.Recovery {
		r["mean"] /= r["n"]
	}
	s.Verdicts = append(checkAll(ops, cfg.Out), CheckConvergence(states, tries))
	s.Pass = true
	for _, v := range s.Verdicts {
		s.Pass = s.Pass && v.Pass
	}
	s.Wall = time.Since(started).Round(time.Second).String()
	if err := WriteHistory(filepath.Join(cfg.Out, "history.jsonl"), ops); err != nil {
		return s, err
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := writeFileIf(cfg.Out, "summary.json", b); err != nil {
		return s, err
	}
	if !s.Pass {
		h.DumpLogs()
	}
	return s, nil
}

// checkAll runs every checker that works from the history alone.
func checkAll(ops []Op, dir string) []*Verdict {
	return []*Verdict{
		CheckRegister(ops, 20*time.Second, dir),
		CheckLocks(ops),
		CheckElection(ops),
		CheckBank(ops),
		CheckTTL(ops),
		CheckMemo(ops),
		CheckCounters(ops),
		CheckDurability(ops),
		CheckSessionLeases(ops),
		CheckHostile(ops),
		CheckMemory(ops),
		CheckWatch(ops),
	}
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// ensureMembers adds back any node a membership fault left out.
func ensureMembers(c *client.Client, h *Harness, lg func(string, ...any)) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Members(ctx)
	if err != nil {
		lg("members: %v", err)
		return
	}
	in := map[string]bool{}
	for _, m := range resp.GetMembers() {
		in[m.GetName()] = true
	}
	for i := 0; i < h.n; i++ {
		if !in[nodeName(i)] {
			lg("adding back %s", nodeName(i))
			if _, err := c.AddMember(ctx, nodeName(i), h.Node(i).PeerAddr, false); err != nil {
				lg("add %s: %v", nodeName(i), err)
			}
		}
	}
}

// finalReads reads every register key and counter linearizably after the
// final restart, and the bank's accounts in one transaction, recording
// them as workload "final". It stops trying after limit: a key it did not
// read fails the durability checker, accounts not read the bank checker.
func finalReads(e *Env, c *client.Client, limit time.Duration) {
	all, cancelAll := context.WithTimeout(context.Background(), limit)
	defer cancelAll()
	e.mu.Lock()
	var reg, ctr []string
	for k := range e.regKeys {
		reg = append(reg, k)
	}
	for k := range e.ctrKeys {
		ctr = append(ctr, k)
	}
	e.mu.Unlock()
	sort.Strings(reg)
	sort.Strings(ctr)
	read := func(key, typ string) {
		for try := 0; try < 5 && all.Err() == nil; try++ {
			ctx, cancel := context.WithTimeout(all, 3*time.Second)
			op := e.H.Invoke(&Op{Client: -1, Workload: "final", Type: typ, Key: key})
			resp, err := c.Get(ctx, []byte(key))
			cancel()
			switch {
			case err == nil:
				op.Found, op.Value, op.Version = true, string(resp.GetKv().GetValue()), resp.GetKv().GetVersion()
				if typ == "read-counter" {
					op.Result, _ = strconv.ParseInt(op.Value, 10, 64)
				}
				e.H.OK(op, resp.GetHeader())
				return
			case errors.Is(err, client.ErrNotFound):
				e.H.OK(op, nil)
				return
			default:
				e.H.Error(op, err)
			}
		}
	}
	for _, k := range reg {
		read(k, "read")
	}
	for _, k := range ctr {
		read(k, "read-counter")
	}
	for try := 0; try < 5 && all.Err() == nil; try++ {
		ctx, cancel := context.WithTimeout(all, 3*time.Second)
		ok := readBankTxn(ctx, e, c, -1, "final")
		cancel()
		if ok {
			break
		}
	}
}

// converge polls every node's status until all report the same applied
// index and state hash, or limit passes; it returns the last statuses.
func converge(h *Harness, limit time.Duration) ([]NodeState, int) {
	deadline := time.Now().Add(limit)
	var states []NodeState
	tries := 0
	for time.Now().Before(deadline) {
		tries++
		states = states[:0]
		for i := 0; i < h.n; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := h.Status(ctx, i)
			cancel()
			ns := NodeState{Name: nodeName(i)}
			if err != nil {
				ns.Err = err.Error()
			} else {
				ns.Applied, ns.StateHash = st.GetAppliedIndex(), hex.EncodeToString(st.GetStateHash())
			}
			states = append(states, ns)
		}
		if CheckConvergence(states, tries).Pass {
			return states, tries
		}
		time.Sleep(time.Duration(20+rand.IntN(80)) * time.Millisecond)
	}
	return states, tries
}

// PrintSummary writes the short human summary.
func PrintSummary(w io.Writer, s *Summary) {
	verdict := "PASS"
	if !s.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "jepsen-lite %s: %d nodes, %s workload, seed %d, wall %s", verdict, s.Nodes, s.Duration, s.Seed, s.Wall)
	if s.Bug != "" {
		fmt.Fprintf(w, ", planted bug %q", s.Bug)
	}
	fmt.Fprintf(w, "\n\nops: %d\n", s.Ops)
	for _, k := range sortedKeys(s.OpsByType) {
		m := s.OpsByType[k]
		fmt.Fprintf(w, "  %-24s ok %-6d fail %-6d info %-6d\n", k, m[OK], m[Fail], m[Info])
	}
	fmt.Fprintf(w, "\nfaults: %d\n", len(s.Faults))
	for _, k := range sortedKeys(s.ByKind) {
		r := s.Recovery[k]
		fmt.Fprintf(w, "  %-16s %3d   recovery ms min %5.0f mean %5.0f max %5.0f", k, s.ByKind[k], r["min"], r["mean"], r["max"])
		if r["unrecovered"] > 0 {
			fmt.Fprintf(w, "   NOT RECOVERED %0.f", r["unrecovered"])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\ncheckers:\n")
	for _, v := range s.Verdicts {
		res := "pass"
		if !v.Pass {
			res = "FAIL"
		}
		var cs []string
		for _, k := range sortedKeys(v.Counts) {
			cs = append(cs, fmt.Sprintf("%s=%d", k, v.Counts[k]))
		}
		fmt.Fprintf(w, "  %-22s %s  %s\n", v.Name, res, strings.Join(cs, " "))
		for _, p := range v.Problems {
			fmt.Fprintf(w, "      ! %s\n", p)
		}
		for i, p := range v.Notes {
			if i >= 3 {
				fmt.Fprintf(w, "      (%d more notes in summary.json)\n", len(v.Notes)-3)
				break
			}
			fmt.Fprintf(w, "      ~ %s\n", p)
		}
		for _, f := range v.Files {
			fmt.Fprintf(w, "      see %s\n", f)
		}
	}
	fmt.Fprintf(w, "\nhistory and summary.json in %s\n", s.Out)
}

// enableAuth makes the users of a --tls run and turns auth on: root (an
// admin, signing in by its client certificate) and a worker user with
// readwrite on every key, lock and cache key.
func enableAuth(certs *pki.DevFiles, endpoints []string) (*Security, error) {
	adminTLS, err := client.TLSFromFiles(certs.CACert, certs.Client.Cert, certs.Client.Key)
	if err != nil {
		return nil, err
	}
	workerTLS, err := client.TLSFromFiles(certs.CACert, "", "")
	if err != nil {
		return nil, err
	}
	c, err := client.New(client.Config{Endpoints: endpoints, TLS: adminTLS})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sec := &Security{WorkerTLS: workerTLS, AdminTLS: adminTLS, User: "worker", Password: "jepsen-lite-worker"}
	steps := []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", ""); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "admin"); return err },
		func() error { _, err := c.UserAdd(ctx, sec.User, sec.Password); return err },
		func() error { _, err := c.RoleAdd(ctx, "rw"); return err },
	}
	for _, k := range []kvpb.PermKind{kvpb.PermKind_PERM_KIND_KEYS, kvpb.PermKind_PERM_KIND_LOCKS, kvpb.PermKind_PERM_KIND_CACHE} {
		steps = append(steps, func() error {
			_, err := c.RoleGrantPermission(ctx, "rw", k, nil, kvpb.PermLevel_PERM_LEVEL_READWRITE)
			return err
		})
	}
	steps = append(steps,
		func() error { _, err := c.UserGrantRole(ctx, sec.User, "rw"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	)
	for _, f := range steps {
		if err := f(); err != nil {
			return nil, err
		}
	}
	return sec, nil
}
