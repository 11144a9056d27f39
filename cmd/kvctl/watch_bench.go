package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
)

// benchWatchFlags are the flags of `bench watch` (the shared bench flags
// give --conns, --total, --duration and --val-size).
type benchWatchFlags struct {
	watchers int
	rate     float64
	keys     int
	endpoint string
	drain    time.Duration
	progress time.Duration
}

func newBenchWatchCmd(a *app, f *benchFlags) *cobra.Command {
	var w benchWatchFlags
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "watch fan-out: --watchers streams on one member, puts at --rate; reports delivery latency p50/p99",
		Long: `bench watch opens --watchers watch streams on one member (--watch-endpoint, default
the first endpoint), spread over --conns client instances, then writes --total
puts (or for --duration) at --rate per second through all endpoints. Each put's
value is its send time; each watcher records, for every change it receives, the
time from the put being sent to the change arriving. With --keys 0 every watcher
watches one prefix and receives every put (full fan-out); with --keys K the
watchers are spread over K keys and the puts over the same keys, so each put
reaches watchers/K of them.

It reports how long the watchers took to open, the member's memory before and
after, deliveries (and any missing: a watcher that did not get every change it
should have), deliveries per second, and delivery latency percentiles.`,
		Example: `  kvctl bench watch --watchers 10000 --rate 100 --keys 100 --total 2000
  kvctl bench watch --watchers 100 --rate 1000 --duration 20s`,
		Args: noBenchArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case w.watchers < 1:
				return &usageError{"--watchers: want at least 1"}
			case w.rate <= 0:
				return &usageError{"--rate: want more than 0 puts per second"}
			case w.keys < 0:
				return &usageError{"--keys: want 0 or more"}
			case f.conns < 1:
				return &usageError{"--conns: want at least 1"}
			case f.duration < 0:
				return &usageError{"--duration: negative"}
			case f.duration == 0 && f.total < 1:
				return &usageError{"--total: want at least 1 (or give --duration)"}
			case w.progress < time.Millisecond:
				return &usageError{"--progress-interval: want at least 1ms"}
			}
			return runBenchWatch(cmd.Context(), a, f, &w)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&w.watchers, "watchers", 100, "watch streams to open")
	fl.Float64Var(&w.rate, "rate", 1000, "puts per second")
	fl.IntVar(&w.keys, "keys", 0, "spread watchers and puts over this many keys (0: every watcher sees every put)")
	fl.StringVar(&w.endpoint, "watch-endpoint", "", "the member every watcher connects to (default: the first endpoint)")
	fl.DurationVar(&w.drain, "drain", 30*time.Second, "after the last put, how long to wait for every change to arrive")
	fl.DurationVar(&w.progress, "progress-interval", 10*time.Second, "how often each stream gets a progress message from the member (their cost is part of the member's CPU)")
	return cmd
}

// latencyHist is a log-scale histogram of durations with 16 buckets per
// power of two (about 4% resolution), safe for concurrent use: millions of
// deliveries per second cannot each be kept.
type latencyHist struct {
	b   [64 * 16]atomic.Uint64
	n   atomic.Uint64
	max atomic.Int64
}

func (h *latencyHist) add(d time.Duration) {
	ns := max(int64(d), 1)
	i := min(int(math.Log2(float64(ns))*16), len(h.b)-1)
	h.b[i].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			break
		}
	}
}

// percentile returns the upper edge of the bucket holding the p-th
// percentile (p in [0, 1]).
func (h *latencyHist) percentile(p float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	target := uint64(math.Ceil(p * float64(n)))
	var cum uint64
	for i := range h.b {
		cum += h.b[i].Load()
		if cum >= max(target, 1) {
			return min(time.Duration(math.Exp2(float64(i+1)/16)), time.Duration(h.max.Load()))
		}
	}
	return time.Duration(h.max.Load())
}

// watchBenchReport is what `bench watch` prints (-o json: this object).
type watchBenchReport struct {
	Workload             string  `json:"workload"`
	Watchers             int     `json:"watchers"`
	Member               string  `json:"member"`
	Keys                 int     `json:"keys"`
	Puts                 int64   `json:"puts"`
	PutErrors            int64   `json:"put_errors"`
	RateAsked            float64 `json:"rate_asked"`
	RateAchieved         float64 `json:"rate_achieved"`
	OpenSeconds          float64 `json:"open_seconds"`
	MemberRSSBefore      uint64  `json:"member_rss_before_bytes,omitempty"`
	MemberRSSWatching    uint64  `json:"member_rss_watching_bytes,omitempty"`
	Expected             uint64  `json:"deliveries_expected"`
	Delivered            uint64  `json:"deliveries"`
	Missing              uint64  `json:"deliveries_missing"`
	Duplicates           uint64  `json:"deliveries_duplicated"`
	PerSecond            float64 `json:"deliveries_per_second"`
	P50Ms                float64 `json:"latency_p50_ms"`
	P90Ms                float64 `json:"latency_p90_ms"`
	P99Ms                float64 `json:"latency_p99_ms"`
	MaxMs                float64 `json:"latency_max_ms"`
	MemberCPUPerDelivery float64 `json:"member_cpu_us_per_delivery,omitempty"`
	MemberCPUPercent     float64 `json:"member_cpu_percent,omitempty"` // of one core, while writing and delivering
	WatchErrors          int64   `json:"watch_errors"`
}

func (r *watchBenchReport) print(w io.Writer) {
	fmt.Fprintf(w, "watch: %d watchers on %s, %s; %d puts at %.0f/s asked, %.0f/s achieved\n",
		r.Watchers, r.Member, keysText(r.Keys), r.Puts, r.RateAsked, r.RateAchieved)
	fmt.Fprintf(w, "  open:       %d watchers in %.2fs", r.Watchers, r.OpenSeconds)
	if r.MemberRSSBefore > 0 {
		fmt.Fprintf(w, "; member RSS %.0f MiB -> %.0f MiB with the watchers open", float64(r.MemberRSSBefore)/(1<<20), float64(r.MemberRSSWatching)/(1<<20))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  deliveries: %d of %d (%d missing, %d duplicated), %.0f/s\n", r.Delivered, r.Expected, r.Missing, r.Duplicates, r.PerSecond)
	fmt.Fprintf(w, "  latency:    p50 %.2fms  p90 %.2fms  p99 %.2fms  max %.2fms  (put sent -> change received)\n", r.P50Ms, r.P90Ms, r.P99Ms, r.MaxMs)
	if r.MemberCPUPerDelivery > 0 {
		fmt.Fprintf(w, "  member CPU: %.2f us per delivery (its puts and progress messages included), %.0f%% of a core\n", r.MemberCPUPerDelivery, r.MemberCPUPercent)
	}
	if r.PutErrors > 0 || r.WatchErrors > 0 {
		fmt.Fprintf(w, "  errors:     %d puts, %d watch reconnects\n", r.PutErrors, r.WatchErrors)
	}
}

func keysText(k int) string {
	if k == 0 {
		return "one prefix (every watcher sees every put)"
	}
	return fmt.Sprintf("%d keys", k)
}

func runBenchWatch(ctx context.Context, a *app, f *benchFlags, o *benchWatchFlags) error {
	var eps []string
	for _, e := range strings.Split(a.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return &usageError{"--endpoints: no endpoint given"}
	}
	member := o.endpoint
	if member == "" {
		member = eps[0]
	}
	// The global TLS and sign-in flags apply to the load too.
	newClient := func(eps []string) (*client.Client, error) {
		cfg := client.Config{Endpoints: eps, Dialer: testDialer}
		if err := a.configure(&cfg); err != nil {
			return nil, err
		}
		return client.New(cfg)
	}
	writer, err := newClient(eps)
	if err != nil {
		return err
	}
	defer writer.Close()
	var wcs []*client.Client
	for range f.conns {
		c, err := newClient([]string{member})
		if err != nil {
			return err
		}
		defer c.Close()
		wcs = append(wcs, c)
	}
	status := func() (rss, cpu uint64) {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		st, err := writer.Status(sctx, member, client.WithoutStateHash())
		if err != nil {
			return 0, 0
		}
		return st.GetRssBytes(), st.GetCpuMicros()
	}

	prefix := fmt.Sprintf("bench/watch/%d/", time.Now().UnixNano())
	keyOf := func(i int) string {
		if o.keys == 0 {
			return prefix + "k"
		}
		return prefix + strconv.Itoa(i%o.keys)
	}
	// Watchers start after this index: none can miss a put, whenever its
	// stream opens. The ready marker tells when every stream is open.
	sctx, cancel := context.WithTimeout(ctx, a.timeout)
	start, err := writer.Put(sctx, []byte(prefix+"ready"), []byte("0"))
	cancel()
	if err != nil {
		return fmt.Errorf("bench watch: first put: %w", err)
	}
	rssBefore, _ := status()

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	type watcherState struct {
		ready   atomic.Bool
		got     atomic.Uint64
		dup     atomic.Uint64
		lastIdx uint64
	}
	ws := make([]*watcherState, o.watchers)
	var hist latencyHist
	var watchErrs atomic.Int64
	var ready atomic.Int64
	var wg sync.WaitGroup
	opened := time.Now()
	for i := range o.watchers {
		st := &watcherState{}
		ws[i] = st
		// From just before the first put: no stream can miss a change,
		// whenever it opens.
		key, opts := prefix, []client.WatchOption{client.FromIndex(start.GetKv().GetModIndex() - 1),
			client.WithProgressInterval(o.progress)}
		if o.keys > 0 {
			key = keyOf(i)
		} else {
			opts = append(opts, client.WithPrefix())
		}
		c := wcs[i%len(wcs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			watchKey := []byte(key)
			for ev, err := range c.Watch(wctx, watchKey, opts...) {
				if err != nil {
					if wctx.Err() == nil {
						watchErrs.Add(1)
					}
					return
				}
				if ev.Kind != client.EventChange {
					continue
				}
				now := time.Now().UnixNano()
				if ev.Index <= st.lastIdx {
					st.dup.Add(1)
					continue
				}
				st.lastIdx = ev.Index
				v := ev.Change.GetKv().GetValue()
				if strings.HasSuffix(string(ev.Change.Key), "ready") || string(v) == "ready" {
					if !st.ready.Swap(true) {
						ready.Add(1)
					}
					continue
				}
				sent, err := strconv.ParseInt(string(v), 10, 64)
				if err != nil {
					continue
				}
				st.got.Add(1)
				hist.add(time.Duration(now - sent))
			}
		}()
	}
	if o.keys > 0 {
		// The marker for exact-key watchers: one put of "ready" per key.
		for k := range min(o.keys, o.watchers) {
			pctx, cancel := context.WithTimeout(ctx, a.timeout)
			_, err := writer.Put(pctx, []byte(keyOf(k)), []byte("ready"))
			cancel()
			if err != nil {
				return fmt.Errorf("bench watch: ready marker: %w", err)
			}
		}
	}
	// Wait for every watcher to have its marker (the prefix watchers see
	// the first put, which is the marker; each key's watchers its own).
	for deadline := time.Now().Add(5*time.Minute + time.Duration(o.watchers)*time.Millisecond); ready.Load() < int64(o.watchers); {
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			wg.Wait()
			return fmt.Errorf("bench watch: only %d of %d watchers opened", ready.Load(), o.watchers)
		}
		time.Sleep(10 * time.Millisecond)
	}
	openTime := time.Since(opened)
	rssWatching, cpu0 := status()
	fmt.Fprintf(a.stderr, "bench watch: %d watchers open in %.2fs; writing\n", o.watchers, openTime.Seconds())

	// Puts at the rate, from a pool of writers (a put takes a round trip).
	var puts, putErrs atomic.Int64
	perKey := make([]atomic.Uint64, max(o.keys, 1))
	total := int64(f.total)
	if f.duration > 0 {
		total = math.MaxInt64
	}
	interval := time.Duration(float64(time.Second) / o.rate)
	tickets := make(chan int64, 1024)
	var pw sync.WaitGroup
	for range 64 {
		pw.Add(1)
		go func() {
			defer pw.Done()
			for n := range tickets {
				k := int(n) % max(o.keys, 1)
				v := strconv.FormatInt(time.Now().UnixNano(), 10)
				pctx, cancel := context.WithTimeout(ctx, a.timeout)
				_, err := writer.Put(pctx, []byte(keyOf(k)), []byte(v))
				cancel()
				if err != nil {
					putErrs.Add(1)
					continue
				}
				puts.Add(1)
				perKey[k].Add(1)
			}
		}()
	}
	began := time.Now()
	var end time.Time
	if f.duration > 0 {
		end = began.Add(f.duration)
	}
	for n := int64(0); n < total && ctx.Err() == nil; n++ {
		next := began.Add(time.Duration(n) * interval)
		if !end.IsZero() && !next.Before(end) {
			break
		}
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		tickets <- n
	}
	close(tickets)
	pw.Wait()
	writeTime := time.Since(began)

	// Every watcher should get every put to what it watches.
	var expected uint64
	for i := range o.watchers {
		if o.keys == 0 {
			expected += uint64(puts.Load())
		} else {
			expected += perKey[i%o.keys].Load()
		}
	}
	delivered := func() uint64 {
		var n uint64
		for _, st := range ws {
			n += st.got.Load()
		}
		return n
	}
	for deadline := time.Now().Add(o.drain); delivered() < expected && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(20 * time.Millisecond)
	}
	deliverTime := time.Since(began)
	_, cpu1 := status()
	stop()
	wg.Wait()

	rep := &watchBenchReport{
		Workload: "watch", Watchers: o.watchers, Member: member, Keys: o.keys,
		Puts: puts.Load(), PutErrors: putErrs.Load(), RateAsked: o.rate,
		RateAchieved: float64(puts.Load()) / writeTime.Seconds(),
		OpenSeconds:  openTime.Seconds(), MemberRSSBefore: rssBefore, MemberRSSWatching: rssWatching,
		Expected: expected, Delivered: delivered(), WatchErrors: watchErrs.Load(),
		P50Ms: millis(hist.percentile(0.50)), P90Ms: millis(hist.percentile(0.90)), P99Ms: millis(hist.percentile(0.99)), MaxMs: millis(time.Duration(hist.max.Load())),
	}
	rep.PerSecond = float64(rep.Delivered) / deliverTime.Seconds()
	if rep.Delivered < expected {
		rep.Missing = expected - rep.Delivered
	}
	for _, st := range ws {
		rep.Duplicates += st.dup.Load()
	}
	if cpu1 > cpu0 && rep.Delivered > 0 {
		rep.MemberCPUPerDelivery = float64(cpu1-cpu0) / float64(rep.Delivered)
		rep.MemberCPUPercent = 100 * float64(cpu1-cpu0) / float64(deliverTime.Microseconds())
	}
	if a.json() {
		if err := a.printJSON(rep); err != nil {
			return err
		}
	} else {
		rep.print(a.stdout)
	}
	switch {
	case rep.Missing > 0 || rep.Duplicates > 0:
		return withCode(exitFailed, fmt.Errorf("bench watch: %d deliveries missing, %d duplicated", rep.Missing, rep.Duplicates))
	case rep.PutErrors > 0:
		return withCode(exitFailed, fmt.Errorf("bench watch: %d puts failed: the figures are not clean", rep.PutErrors))
	case ctx.Err() != nil:
		return withCode(exitFailed, fmt.Errorf("bench watch: interrupted: %w", ctx.Err()))
	}
	return nil
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
