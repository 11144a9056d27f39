package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/procstat"
	"github.com/kvdproject/kvd/lock"
)

func init() { subcommands = append(subcommands, newBenchCmd) }

// benchFlags are the flags every bench subcommand shares.
type benchFlags struct {
	clients  int
	conns    int
	total    int
	duration time.Duration
	keySize  int
	valSize  int
	keySpace int
	seqKeys  bool
	firstKey int

	consistency string        // get
	lockers     int           // lock
	hitRatio    float64       // memoize
	memoReads   string        // memoize: linearizable or local
	nearCache   time.Duration // memoize: near-cache bound, 0 off

	cpuProfile string // write the load generator's own CPU profile here
	unary      bool   // client.Config.NoPipeline
}

func newBenchCmd(a *app) *cobra.Command {
	var f benchFlags
	cmd := group(&cobra.Command{
		Use:   "bench",
		Short: "Measure the cluster: requests/s and latency percentiles of one workload",
		Long: `bench runs one workload against the cluster with many concurrent clients and
prints requests/s, mean, p50, p90, p99, p99.9 and max latency, and errors by
kind. A progress line goes to stderr while it runs. A run with any error is
reported as such (and kvctl exits 1): its figures are not clean.

Clients are spread over --conns client instances (one gRPC connection to each
member per instance). The run ends after --total requests, or after
--duration when it is given.`,
		Example: `  kvctl bench put --clients 1000 --conns 100 --total 100000 --key-size 8 --val-size 256
  kvctl bench get --consistency linearizable --clients 1000 --conns 100 --total 100000
  kvctl bench lock --lockers 8 --total 2000
  kvctl bench keepalive --clients 1000 --total 100000
  kvctl bench memoize --clients 50 --total 100000 --hit-ratio 0.99`,
	})
	pf := cmd.PersistentFlags()
	pf.IntVar(&f.clients, "clients", 1, "concurrent clients (goroutines issuing one request at a time)")
	pf.IntVar(&f.conns, "conns", 1, "client instances (gRPC connections) the clients are spread over")
	pf.IntVar(&f.total, "total", 10000, "requests to make (ignored with --duration)")
	pf.DurationVar(&f.duration, "duration", 0, "run for this long instead of --total requests")
	pf.IntVar(&f.keySize, "key-size", 8, "key size in bytes")
	pf.IntVar(&f.valSize, "val-size", 256, "value size in bytes")
	pf.IntVar(&f.keySpace, "key-space", 100000, "distinct keys (chosen at random)")
	pf.BoolVar(&f.seqKeys, "sequential-keys", false, "put: write keys 0, 1, 2... (modulo --key-space) instead of random ones")
	pf.IntVar(&f.firstKey, "first-key", 0, "put --sequential-keys: start at this key (to load a key space in parts)")
	pf.BoolVar(&f.unary, "unary", false, "send every request as a unary gRPC call of its own instead of over each connection's Pipeline stream (client.Config.NoPipeline), to compare")
	pf.StringVar(&f.cpuProfile, "cpuprofile", "", "write kvctl's own CPU profile of the timed run to this file (go tool pprof)")

	put := &cobra.Command{
		Use:   "put",
		Short: "exactly-once puts (each client instance writes through its own session)",
		Args:  noBenchArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), a, &f, putWorkload{})
		},
	}
	get := &cobra.Command{
		Use:   "get",
		Short: "gets of keys written before the run (--consistency linearizable|stale)",
		Args:  noBenchArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch f.consistency {
			case "linearizable", "stale":
			default:
				return &usageError{fmt.Sprintf("--consistency: want linearizable or stale, got %q", f.consistency)}
			}
			return runBench(cmd.Context(), a, &f, getWorkload{stale: f.consistency == "stale"})
		},
	}
	get.Flags().StringVar(&f.consistency, "consistency", "linearizable", "linearizable or stale")
	lk := &cobra.Command{
		Use:   "lock",
		Short: "one lock, --lockers sessions each doing acquire+release pairs; reports pairs/s and handoffs/s",
		Args:  noBenchArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.lockers < 1 {
				return &usageError{"--lockers: want at least 1"}
			}
			f.clients = f.lockers
			return runBench(cmd.Context(), a, &f, &lockWorkload{})
		},
	}
	lk.Flags().IntVar(&f.lockers, "lockers", 1, "sessions contending for the one lock")
	ka := &cobra.Command{
		Use:   "keepalive",
		Short: "session keepalives: --clients sessions, each renewed in a loop over its connection's keepalive stream, as the Go client renews",
		Args:  noBenchArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), a, &f, &keepaliveWorkload{})
		},
	}
	memo := &cobra.Command{
		Use:   "memoize",
		Short: "cache.Memoize: --hit-ratio of the calls hit warm keys, the rest compute and store a new one",
		Args:  noBenchArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.hitRatio < 0 || f.hitRatio > 1 {
				return &usageError{"--hit-ratio: want a number in [0, 1]"}
			}
			if f.memoReads != "linearizable" && f.memoReads != "local" {
				return &usageError{fmt.Sprintf("--reads: want linearizable or local, got %q", f.memoReads)}
			}
			if f.nearCache < 0 {
				return &usageError{"--near-cache: want a duration >= 0"}
			}
			return runBench(cmd.Context(), a, &f, &memoizeWorkload{})
		},
	}
	memo.Flags().Float64Var(&f.hitRatio, "hit-ratio", 0.99, "share of calls that find a fresh value")
	memo.Flags().StringVar(&f.memoReads, "reads", "linearizable", "how a fresh value is read: linearizable (through the leader) or local (cache.LocalReads: the receiving member's state)")
	memo.Flags().DurationVar(&f.nearCache, "near-cache", 0, "keep fresh values in the process for up to this long (cache.NearCache); 0: off")
	cmd.AddCommand(put, get, lk, ka, memo, newBenchWatchCmd(a, &f))
	return cmd
}

func noBenchArgs(cmd *cobra.Command, args []string) error {
	if len(args) != 0 {
		return &usageError{fmt.Sprintf("%s: takes no arguments, got %d", cmd.CommandPath(), len(args))}
	}
	return nil
}

func (f *benchFlags) validate() error {
	switch {
	case f.clients < 1:
		return &usageError{"--clients: want at least 1"}
	case f.conns < 1:
		return &usageError{"--conns: want at least 1"}
	case f.conns > f.clients:
		return &usageError{fmt.Sprintf("--conns %d exceeds --clients %d", f.conns, f.clients)}
	case f.duration < 0:
		return &usageError{"--duration: negative"}
	case f.duration == 0 && f.total < 1:
		return &usageError{"--total: want at least 1 (or give --duration)"}
	case f.keySize < 1, f.valSize < 0:
		return &usageError{"--key-size: want at least 1; --val-size: not negative"}
	case f.keySpace < 1:
		return &usageError{"--key-space: want at least 1"}
	}
	return nil
}

// ---------------------------------------------------------------------------
// The runner

// workload is one kind of request. setup runs before timing starts (it
// makes sessions, writes the keys a read needs); op makes one request for
// worker w and returns an error only for a failed request.
type workload interface {
	name() string
	setup(ctx context.Context, b *bench) error
	op(ctx context.Context, b *bench, w *worker) error
	teardown(ctx context.Context, b *bench)
	extra(b *bench, elapsed time.Duration) map[string]float64
}

// bench is one run: the client instances, the flags and the counters.
type bench struct {
	f       *benchFlags
	timeout time.Duration
	clients []*client.Client // --conns instances
	value   []byte

	issued atomic.Int64 // requests handed out (for --total)
	seq    atomic.Int64 // next key of --sequential-keys
	done   atomic.Int64 // requests finished
	failed atomic.Int64 // of which failed
}

// worker is one concurrent client: its client instance, its samples.
type worker struct {
	id      int
	c       *client.Client
	rng     *rand.Rand
	lat     []time.Duration
	errs    map[string]int64
	scratch []byte // key buffer
	n       int    // requests started
}

func (b *bench) key(w *worker, i int) []byte {
	return formatKey(w.scratch[:0], i, b.f.keySize)
}

// formatKey writes i as a zero-padded decimal of exactly size bytes (its
// low digits when size is too small for it).
func formatKey(dst []byte, i, size int) []byte {
	s := strconv.Itoa(i)
	if len(s) >= size {
		return append(dst, s[len(s)-size:]...)
	}
	for range size - len(s) {
		dst = append(dst, '0')
	}
	return append(dst, s...)
}

func runBench(ctx context.Context, a *app, f *benchFlags, wl workload) error {
	if err := f.validate(); err != nil {
		return err
	}
	var eps []string
	for _, e := range strings.Split(a.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return &usageError{"--endpoints: no endpoint given"}
	}
	// An unwritable --cpuprofile fails before any work is done.
	prof, err := createCPUProfile(f.cpuProfile)
	if err != nil {
		return err
	}
	defer prof.close()
	b := &bench{f: f, timeout: a.timeout, value: make([]byte, f.valSize)}
	for i := range b.value {
		b.value[i] = 'a' + byte(i%26)
	}
	for range f.conns {
		cfg := client.Config{Endpoints: eps, Dialer: testDialer, NoPipeline: f.unary}
		// The global TLS and sign-in flags apply to the load too.
		if err := a.configure(&cfg); err != nil {
			return err
		}
		c, err := client.New(cfg)
		if err != nil {
			return err
		}
		b.clients = append(b.clients, c)
	}
	defer func() {
		var wg sync.WaitGroup
		for _, c := range b.clients {
			wg.Go(func() { c.Close() })
		}
		wg.Wait()
	}()
	// Every instance learns the leader before timing starts, so that no
	// request pays for discovery.
	if err := b.forEachClient(ctx, func(ctx context.Context, c *client.Client) error {
		_, err := c.Members(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("bench: reach the cluster: %w", err)
	}
	if err := wl.setup(ctx, b); err != nil {
		return fmt.Errorf("bench %s: setup: %w", wl.name(), err)
	}
	if err := prof.start(); err != nil {
		return err
	}
	srv0, srvOK := b.serversCPU(ctx, eps)
	own0 := procstat.CPUMicros()
	rep := b.run(ctx, wl, a.stderr)
	own1 := procstat.CPUMicros()
	srv1, srvOK1 := b.serversCPU(context.WithoutCancel(ctx), eps) // also after Ctrl-C
	prof.stop()
	if rep.Requests > 0 {
		rep.CPU = &cpuPerRequest{Kvctl: float64(own1-own0) / float64(rep.Requests)}
		if srvOK && srvOK1 && srv1 >= srv0 {
			rep.CPU.Servers = float64(srv1-srv0) / float64(rep.Requests)
			rep.CPU.Members = len(eps)
		}
	}
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	wl.teardown(tctx, b)
	cancel()
	if a.json() {
		if err := a.printJSON(rep); err != nil {
			return err
		}
	} else {
		rep.print(a.stdout)
	}
	if rep.Errors > 0 {
		return withCode(exitFailed, fmt.Errorf("bench %s: %d of %d requests failed: the figures are not clean", wl.name(), rep.Errors, rep.Errors+rep.Requests))
	}
	if ctx.Err() != nil {
		return withCode(exitFailed, fmt.Errorf("bench %s: interrupted: %w", wl.name(), ctx.Err()))
	}
	return nil
}

// forEachClient runs fn on every client instance, a few at a time.
func (b *bench) forEachClient(ctx context.Context, fn func(ctx context.Context, c *client.Client) error) error {
	return parallel(ctx, len(b.clients), 16, func(ctx context.Context, i int) error {
		rctx, cancel := context.WithTimeout(ctx, b.timeout)
		defer cancel()
		return fn(rctx, b.clients[i])
	})
}

// parallel runs fn(0..n-1) with at most width at once; the first error wins.
func parallel(ctx context.Context, n, width int, fn func(ctx context.Context, i int) error) error {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range min(n, width) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// run times the workload: --clients workers, each making one request at a
// time, until --total requests were handed out or --duration passed.
func (b *bench) run(ctx context.Context, wl workload, stderr io.Writer) *benchReport {
	f := b.f
	workers := make([]*worker, f.clients)
	for i := range workers {
		workers[i] = &worker{
			id:      i,
			c:       b.clients[i%len(b.clients)],
			rng:     rand.New(rand.NewPCG(uint64(i)+1, uint64(time.Now().UnixNano()))),
			errs:    map[string]int64{},
			scratch: make([]byte, 0, f.keySize),
		}
		if f.duration == 0 {
			workers[i].lat = make([]time.Duration, 0, f.total/f.clients+1)
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if f.duration > 0 {
		var c2 context.CancelFunc
		rctx, c2 = context.WithTimeout(rctx, f.duration)
		defer c2()
	}

	stopProgress := b.progress(wl.name(), stderr)
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			for rctx.Err() == nil {
				if f.duration == 0 && b.issued.Add(1) > int64(f.total) {
					return
				}
				w.n++
				octx, ocancel := context.WithTimeout(rctx, b.timeout)
				t0 := time.Now()
				err := wl.op(octx, b, w)
				d := time.Since(t0)
				ocancel()
				if err != nil && rctx.Err() != nil && f.duration > 0 {
					// Cut off by the end of the run: not a failure.
					return
				}
				b.done.Add(1)
				if err != nil {
					b.failed.Add(1)
					w.errs[errorKind(err)]++
					continue
				}
				w.lat = append(w.lat, d)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()

	rep := &benchReport{
		Workload:     wl.name(),
		Clients:      f.clients,
		Conns:        len(b.clients),
		ErrorsByKind: map[string]int64{},
		Seconds:      elapsed.Seconds(),
	}
	var all []time.Duration
	for _, w := range workers {
		all = append(all, w.lat...)
		for k, v := range w.errs {
			rep.ErrorsByKind[k] += v
			rep.Errors += v
		}
	}
	rep.Requests = int64(len(all))
	rep.RequestsPerSec = float64(rep.Requests) / elapsed.Seconds()
	rep.Latency = summarize(all)
	rep.Extra = wl.extra(b, elapsed)
	rep.Clean = rep.Errors == 0 && ctx.Err() == nil
	return rep
}

// progress prints a progress line to stderr every second until stopped.
func (b *bench) progress(name string, w io.Writer) (stop func()) {
	tty := false
	if fi, ok := w.(*os.File); ok {
		if st, err := fi.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	line := func() string {
		done := b.done.Load()
		el := time.Since(start)
		of := ""
		if b.f.duration == 0 {
			of = fmt.Sprintf("/%d", b.f.total)
		} else {
			of = fmt.Sprintf(" in %.0fs/%.0fs", el.Seconds(), b.f.duration.Seconds())
		}
		return fmt.Sprintf("bench %s: %d%s requests, %.0f/s, %d errors", name, done, of,
			float64(done)/el.Seconds(), b.failed.Load())
	}
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r%s\x1b[K", line())
				} else {
					fmt.Fprintln(w, line())
				}
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		if tty {
			fmt.Fprintf(w, "\r%s\x1b[K\n", line())
		}
	}
}

// errorKind names the kind of a failed request for the error table.
func errorKind(err error) string {
	var ce *client.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &ce):
		s := strings.TrimPrefix(ce.Code.String(), "ERROR_CODE_")
		return strings.ToLower(strings.ReplaceAll(s, "_", " "))
	}
	if st, ok := status.FromError(err); ok {
		return "grpc " + st.Code().String()
	}
	return "other: " + truncate(err.Error(), 60)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// ---------------------------------------------------------------------------
// The report and the histogram

// latencyStats are in milliseconds.
type latencyStats struct {
	Mean float64 `json:"mean_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
}

type benchReport struct {
	Workload       string             `json:"workload"`
	Clients        int                `json:"clients"`
	Conns          int                `json:"conns"`
	Requests       int64              `json:"requests"` // successful
	Errors         int64              `json:"errors"`
	ErrorsByKind   map[string]int64   `json:"errors_by_kind"`
	Seconds        float64            `json:"seconds"`
	RequestsPerSec float64            `json:"requests_per_sec"`
	Latency        latencyStats       `json:"latency"`
	Extra          map[string]float64 `json:"extra,omitempty"`
	CPU            *cpuPerRequest     `json:"cpu_us_per_request,omitempty"`
	// Clean is false when any request failed or the run was interrupted:
	// such figures must not be quoted as the cluster's performance.
	Clean bool `json:"clean"`
}

// summarize sorts the samples and reads the percentiles off them (exact,
// nearest rank). Fine for the million or so samples a run makes.
func summarize(d []time.Duration) latencyStats {
	if len(d) == 0 {
		return latencyStats{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	ms := func(v time.Duration) float64 { return float64(v) / 1e6 }
	return latencyStats{
		Mean: ms(sum / time.Duration(len(d))),
		P50:  ms(percentile(d, 50)),
		P90:  ms(percentile(d, 90)),
		P99:  ms(percentile(d, 99)),
		P999: ms(percentile(d, 99.9)),
		Max:  ms(d[len(d)-1]),
	}
}

// percentile of sorted samples, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.5) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func (r *benchReport) print(w io.Writer) {
	if !r.Clean {
		fmt.Fprintf(w, "NOT CLEAN: %d failed requests: do not quote these figures\n", r.Errors)
	}
	fmt.Fprintf(w, "workload:   %s (%d clients over %d connections)\n", r.Workload, r.Clients, r.Conns)
	fmt.Fprintf(w, "requests:   %d in %.2fs\n", r.Requests, r.Seconds)
	fmt.Fprintf(w, "requests/s: %.1f\n", r.RequestsPerSec)
	l := r.Latency
	fmt.Fprintf(w, "latency ms: mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
		l.Mean, l.P50, l.P90, l.P99, l.P999, l.Max)
	if len(r.Extra) > 0 {
		keys := make([]string, 0, len(r.Extra))
		for k := range r.Extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "%-11s %.3f\n", k+":", r.Extra[k])
		}
	}
	if c := r.CPU; c != nil {
		if c.Members > 0 {
			fmt.Fprintf(w, "cpu us/req: servers %.1f (sum of %d members), kvctl %.1f\n", c.Servers, c.Members, c.Kvctl)
		} else {
			fmt.Fprintf(w, "cpu us/req: kvctl %.1f (servers: a member did not report)\n", c.Kvctl)
		}
	}
	fmt.Fprintf(w, "errors:     %d\n", r.Errors)
	kinds := make([]string, 0, len(r.ErrorsByKind))
	for k := range r.ErrorsByKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-28s %d\n", k, r.ErrorsByKind[k])
	}
}

// ---------------------------------------------------------------------------
// Workloads

type putWorkload struct{}

func (putWorkload) name() string { return "put" }

func (putWorkload) setup(ctx context.Context, b *bench) error {
	// The first write of an instance creates its session: not timed.
	return b.forEachClient(ctx, func(ctx context.Context, c *client.Client) error {
		_, err := c.Put(ctx, []byte("bench/warmup"), b.value)
		return err
	})
}

func (putWorkload) op(ctx context.Context, b *bench, w *worker) error {
	i := w.rng.IntN(b.f.keySpace)
	if b.f.seqKeys {
		i = (b.f.firstKey + int(b.seq.Add(1)-1)) % b.f.keySpace
	}
	_, err := w.c.Put(ctx, b.key(w, i), b.value)
	return err
}

func (putWorkload) teardown(context.Context, *bench)                   {}
func (putWorkload) extra(*bench, time.Duration) (_ map[string]float64) { return }

type getWorkload struct{ stale bool }

func (g getWorkload) name() string {
	if g.stale {
		return "get (stale)"
	}
	return "get (linearizable)"
}

// setup writes every key of --key-space (at most 100000), so that no read
// misses.
func (getWorkload) setup(ctx context.Context, b *bench) error {
	if b.f.keySpace > 100000 {
		return &usageError{"--key-space: at most 100000 for get (every key is written first)"}
	}
	return parallel(ctx, b.f.keySpace, 64, func(ctx context.Context, i int) error {
		rctx, cancel := context.WithTimeout(ctx, b.timeout)
		defer cancel()
		_, err := b.clients[i%len(b.clients)].Put(rctx, formatKey(nil, i, b.f.keySize), b.value)
		return err
	})
}

func (g getWorkload) op(ctx context.Context, b *bench, w *worker) error {
	k := b.key(w, w.rng.IntN(b.f.keySpace))
	var err error
	if g.stale {
		_, err = w.c.Get(ctx, k, client.WithStale())
	} else {
		_, err = w.c.Get(ctx, k)
	}
	return err
}

func (getWorkload) teardown(context.Context, *bench)                   {}
func (getWorkload) extra(*bench, time.Duration) (_ map[string]float64) { return }

// keepaliveWorkload renews one server session per client, in a loop.
type keepaliveWorkload struct{ ids []uint64 }

func (*keepaliveWorkload) name() string { return "keepalive" }

func (k *keepaliveWorkload) setup(ctx context.Context, b *bench) error {
	k.ids = make([]uint64, b.f.clients)
	return parallel(ctx, b.f.clients, 64, func(ctx context.Context, i int) error {
		rctx, cancel := context.WithTimeout(ctx, b.timeout)
		defer cancel()
		r, err := b.clients[i%len(b.clients)].CreateSession(rctx, time.Minute, "kvctl bench keepalive")
		if err != nil {
			return err
		}
		k.ids[i] = r.GetSession().GetId()
		return nil
	})
}

func (k *keepaliveWorkload) op(ctx context.Context, _ *bench, w *worker) error {
	_, err := w.c.KeepAlive(ctx, k.ids[w.id])
	return err
}

func (k *keepaliveWorkload) teardown(ctx context.Context, b *bench) {
	parallel(ctx, len(k.ids), 64, func(ctx context.Context, i int) error {
		if k.ids[i] != 0 {
			b.clients[i%len(b.clients)].CloseSession(ctx, k.ids[i])
		}
		return nil
	})
}

func (*keepaliveWorkload) extra(*bench, time.Duration) (_ map[string]float64) { return }

// lockWorkload: --lockers sessions take turns on one lock. One request is
// an acquire (waiting in the server's FIFO line) and a release; a handoff
// is a grant to a different session than the previous grant.
type lockWorkload struct {
	name_    string
	sessions []*lock.Session
	mutexes  []*lock.Mutex

	mu       sync.Mutex
	last     int // locker of the last grant, -1 none
	handoffs int64
	acquire  []time.Duration
}

func (*lockWorkload) name() string { return "lock" }

func (l *lockWorkload) setup(ctx context.Context, b *bench) error {
	l.name_ = fmt.Sprintf("bench/lock/%d", time.Now().UnixNano())
	l.last = -1
	l.sessions = make([]*lock.Session, b.f.clients)
	l.mutexes = make([]*lock.Mutex, b.f.clients)
	return parallel(ctx, b.f.clients, 16, func(ctx context.Context, i int) error {
		rctx, cancel := context.WithTimeout(ctx, b.timeout)
		defer cancel()
		s, err := lock.NewSession(rctx, b.clients[i%len(b.clients)], lock.WithTTL(30*time.Second), lock.WithName("kvctl bench lock"))
		if err != nil {
			return err
		}
		l.sessions[i] = s
		l.mutexes[i] = lock.NewMutex(s, l.name_)
		return nil
	})
}

func (l *lockWorkload) op(ctx context.Context, _ *bench, w *worker) error {
	m := l.mutexes[w.id]
	t0 := time.Now()
	if err := m.Lock(ctx); err != nil {
		return err
	}
	d := time.Since(t0)
	l.mu.Lock()
	if l.last != -1 && l.last != w.id {
		l.handoffs++
	}
	l.last = w.id
	l.acquire = append(l.acquire, d)
	l.mu.Unlock()
	// The release must not be cut off by the end of a --duration run: a
	// held lock would stall the others' last acquires.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return m.Unlock(uctx)
}

func (l *lockWorkload) teardown(ctx context.Context, _ *bench) {
	var wg sync.WaitGroup
	for _, s := range l.sessions {
		if s != nil {
			wg.Go(func() { s.Close(ctx) })
		}
	}
	wg.Wait()
}

func (l *lockWorkload) extra(_ *bench, elapsed time.Duration) map[string]float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	acq := summarize(l.acquire)
	return map[string]float64{
		"pairs/s":        float64(len(l.acquire)) / elapsed.Seconds(),
		"handoffs/s":     float64(l.handoffs) / elapsed.Seconds(),
		"acquire p50 ms": acq.P50,
		"acquire p99 ms": acq.P99,
	}
}

// memoizeWorkload: a share --hit-ratio of the calls ask for one of
// --key-space keys made fresh before the run; the others ask for a key
// never seen, so the caller takes the fill lease, computes and stores.
type memoizeWorkload struct {
	caches []*cache.Cache
	prefix string
	misses atomic.Int64
}

func (*memoizeWorkload) name() string { return "memoize" }

func (m *memoizeWorkload) setup(ctx context.Context, b *bench) error {
	m.prefix = fmt.Sprintf("bench/%d/", time.Now().UnixNano())
	var opts []cache.Option
	if b.f.memoReads == "local" {
		opts = append(opts, cache.LocalReads())
	}
	if b.f.nearCache > 0 {
		opts = append(opts, cache.NearCache(b.f.nearCache))
	}
	for _, c := range b.clients {
		m.caches = append(m.caches, cache.New(c, "bench", opts...))
	}
	hot := min(b.f.keySpace, 10000)
	b.f.keySpace = hot
	return parallel(ctx, hot, 64, func(ctx context.Context, i int) error {
		rctx, cancel := context.WithTimeout(ctx, b.timeout)
		defer cancel()
		_, err := m.caches[i%len(m.caches)].Memoize(rctx, m.hotKey(i), time.Hour, m.compute(b))
		return err
	})
}

func (m *memoizeWorkload) hotKey(i int) string { return m.prefix + "hot/" + strconv.Itoa(i) }

func (m *memoizeWorkload) compute(b *bench) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) { return b.value, nil }
}

func (m *memoizeWorkload) op(ctx context.Context, b *bench, w *worker) error {
	cc := m.caches[w.id%len(m.caches)]
	var key string
	if w.rng.Float64() < b.f.hitRatio {
		key = m.hotKey(w.rng.IntN(b.f.keySpace))
	} else {
		key = m.prefix + "miss/" + strconv.Itoa(w.id) + "/" + strconv.Itoa(w.n)
		m.misses.Add(1)
	}
	_, err := cc.Memoize(ctx, key, time.Hour, m.compute(b))
	return err
}

func (m *memoizeWorkload) teardown(context.Context, *bench) {
	for _, c := range m.caches {
		c.Close()
	}
}

func (m *memoizeWorkload) extra(_ *bench, elapsed time.Duration) map[string]float64 {
	return map[string]float64{"misses/s": float64(m.misses.Load()) / elapsed.Seconds()}
}

// cpuProfile is the --cpuprofile file; its methods do nothing without one.
type cpuProfile struct{ out *os.File }

func createCPUProfile(path string) (*cpuProfile, error) {
	if path == "" {
		return &cpuProfile{}, nil
	}
	out, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return &cpuProfile{out: out}, nil
}

func (p *cpuProfile) start() error {
	if p.out == nil {
		return nil
	}
	if err := pprof.StartCPUProfile(p.out); err != nil {
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	return nil
}

func (p *cpuProfile) stop() {
	if p.out != nil {
		pprof.StopCPUProfile()
	}
}

func (p *cpuProfile) close() {
	if p.out != nil {
		p.out.Close()
	}
}

// cpuPerRequest is CPU time per successful request, in microseconds: the
// servers' (the sum over every endpoint's kvd process, as each reports it in
// Cluster.Status; Members 0 when one did not answer) and kvctl's own. CPU per
// request moves far less between runs than requests/s on a shared machine.
// With several members in one process (tests) the servers' figure counts
// that process once per member.
type cpuPerRequest struct {
	Servers float64 `json:"servers"`
	Members int     `json:"members"`
	Kvctl   float64 `json:"kvctl"`
}

// serversCPU sums the CPU time the endpoints' kvd processes report; false
// when any of them did not answer.
func (b *bench) serversCPU(ctx context.Context, eps []string) (uint64, bool) {
	var sum uint64
	for _, ep := range eps {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := b.clients[0].Status(sctx, ep, client.WithoutStateHash())
		cancel()
		if err != nil || st.GetCpuMicros() == 0 {
			return 0, false
		}
		sum += st.GetCpuMicros()
	}
	return sum, true
}
