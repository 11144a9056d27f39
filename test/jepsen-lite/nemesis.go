package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvdproject/kvd/client"
)

// Fault kinds.
var faultKinds = []string{
	"kill-one", "kill-leader", "kill-all",
	"pause-leader", "pause-random",
	"isolate-leader", "split", "bridge", "one-way",
	"client-cut", "client-delay", "link-delay", "reset",
	"clock", "membership", "transfer-leader", "snapshot",
	"hostile-client", "pause-holder",
	"disk-full",
}

// Fault is one injected fault and how the cluster came back from it.
type Fault struct {
	Kind       string  `json:"kind"`
	Detail     string  `json:"detail"`
	Start      float64 `json:"start_s"` // seconds since the run started
	Healed     float64 `json:"healed_s"`
	Recovered  bool    `json:"recovered"`
	RecoveryMs int64   `json:"recovery_ms"` // heal -> first acknowledged probe write
	Err        string  `json:"err,omitempty"`
}

// Nemesis injects faults one after another, on a schedule drawn from a
// seeded generator: the kinds, targets and durations are reproducible;
// which node is leader at a given moment is the cluster's doing.
type Nemesis struct {
	H      *Harness
	Hist   *History
	Rng    *rand.Rand
	Probe  *client.Client // harness client (proxied endpoints)
	Logf   func(string, ...any)
	Faults []Fault // read it after Run returned; Count while it runs
	count  atomic.Int64
	// Kinds to draw from (default faultKinds).
	Kinds []string
	// Hold bounds how long a fault lasts.
	HoldMin, HoldMax time.Duration
	// Env is the workloads' environment: the pause-holder fault records
	// lock operations and writes the fenced resource.
	Env *Env

	hostileRuns atomic.Int64
	probes      atomic.Int64 // dedup probes of the snapshot fault
	bigOnce     sync.Once    // the hostile client's large values are written
	bigErr      error
}

func (nm *Nemesis) hold() time.Duration {
	return nm.HoldMin + time.Duration(nm.Rng.Int64N(int64(nm.HoldMax-nm.HoldMin)+1))
}

// Run injects faults until ctx ends. Every kind comes up once per round,
// in a shuffled order.
func (nm *Nemesis) Run(ctx context.Context) {
	kinds := nm.Kinds
	if len(kinds) == 0 {
		kinds = faultKinds
	}
	var order []string
	for ctx.Err() == nil {
		if len(order) == 0 {
			order = append([]string(nil), kinds...)
			nm.Rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		kind := order[0]
		order = order[1:]
		f := nm.inject(ctx, kind)
		nm.Faults = append(nm.Faults, f)
		nm.count.Add(1)
		if nm.Logf != nil {
			nm.Logf("fault %-15s %-40s recovered=%v in %dms %s", f.Kind, f.Detail, f.Recovered, f.RecoveryMs, f.Err)
		}
		sleepCtx(ctx, time.Duration(100+nm.Rng.IntN(300))*time.Millisecond)
	}
}

// Count is the number of faults injected so far.
func (nm *Nemesis) Count() int { return int(nm.count.Load()) }

func (nm *Nemesis) secs() float64 { return float64(nm.Hist.Now()) / 1e9 }

// leaderOr returns the leader, or a node drawn from the generator.
func (nm *Nemesis) leaderOr(pick int) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if l := nm.H.Leader(ctx); l >= 0 {
		return l
	}
	return pick
}

// inject performs one fault: break, hold, heal, wait for recovery.
func (nm *Nemesis) inject(ctx context.Context, kind string) Fault {
	h := nm.H
	n := h.n
	f := Fault{Kind: kind, Start: nm.secs()}
	hold := nm.hold()
	var after func()                           // run once the cluster has recovered
	pick := nm.Rng.IntN(n)                     // a random node
	other := (pick + 1 + nm.Rng.IntN(n-1)) % n // a different one
	perm := nm.Rng.Perm(n)
	var heal func()
	switch kind {
	case "kill-one", "kill-leader":
		i := pick
		if kind == "kill-leader" {
			i = nm.leaderOr(pick)
		}
		f.Detail = nodeName(i)
		h.Node(i).Kill()
		heal = func() { h.Start(i) }
	case "kill-all":
		f.Detail = "all"
		h.KillAll()
		hold = 300 * time.Millisecond
		heal = func() { h.StartAll() }
	case "pause-leader", "pause-random":
		i := pick
		if kind == "pause-leader" {
			i = nm.leaderOr(pick)
		}
		// Longer than the lock and memo session TTLs.
		hold = max(hold, memoSessionTTL+500*time.Millisecond)
		f.Detail = fmt.Sprintf("%s for %v", nodeName(i), hold)
		h.Node(i).Pause()
		heal = func() { h.Node(i).Resume() }
	case "isolate-leader":
		l := nm.leaderOr(pick)
		var rest []int
		for i := 0; i < n; i++ {
			if i != l {
				rest = append(rest, i)
			}
		}
		f.Detail = fmt.Sprintf("%s | %v", nodeName(l), names(rest))
		h.Partition([]int{l}, rest)
		heal = h.HealNetwork
	case "split":
		k := n/2 + 1 // majority
		maj, min := perm[:k], perm[k:]
		f.Detail = fmt.Sprintf("%v | %v", names(maj), names(min))
		h.Partition(maj, min)
		heal = h.HealNetwork
	case "bridge":
		// perm[0] sees both halves; the halves do not see each other.
		b := perm[0]
		rest := perm[1:]
		left, right := rest[:len(rest)/2], rest[len(rest)/2:]
		f.Detail = fmt.Sprintf("%v | %s | %v", names(left), nodeName(b), names(right))
		h.Partition(left, right)
		heal = h.HealNetwork
	case "one-way":
		// The leader's messages reach nobody; it still hears everyone.
		l := nm.leaderOr(pick)
		f.Detail = fmt.Sprintf("%s -> others dropped", nodeName(l))
		for i := 0; i < n; i++ {
			if i != l {
				h.CutOneWay(l, i)
			}
		}
		heal = h.HealNetwork
	case "client-cut":
		i := pick
		if nm.Rng.IntN(2) == 0 {
			i = nm.leaderOr(pick)
		}
		f.Detail = "clients -/-> " + nodeName(i)
		h.CutClients(i)
		heal = h.HealNetwork
	case "client-delay":
		// Longer than a client attempt: the client retries elsewhere with
		// the same sequence number while the first attempt may apply.
		d := attemptTimeout + 200*time.Millisecond
		i := pick
		if nm.Rng.IntN(2) == 0 {
			i = nm.leaderOr(pick)
		}
		f.Detail = fmt.Sprintf("clients -> %s delayed %v", nodeName(i), d)
		h.clientProxy[i].SetDelay(d)
		heal = h.HealNetwork
	case "link-delay":
		d := time.Duration(50+nm.Rng.IntN(150)) * time.Millisecond
		f.Detail = fmt.Sprintf("all raft links +%v", d)
		h.DelayLinks(d)
		heal = h.HealNetwork
	case "reset":
		c := h.ResetLinks()
		for _, p := range h.clientProxy {
			c += p.Reset()
		}
		f.Detail = fmt.Sprintf("%d connections reset", c)
		hold = 0
		heal = func() {}
	case "clock":
		i := pick
		off := time.Duration(30+nm.Rng.IntN(270)) * time.Second
		if nm.Rng.IntN(2) == 0 {
			off = -off
		}
		f.Detail = fmt.Sprintf("%s clock %+v, then back", nodeName(i), off)
		h.Node(i).Kill()
		h.SetClockOffset(i, off)
		if err := h.Start(i); err != nil {
			f.Err = err.Error()
		}
		// Make it lead for a while, so it stamps the log.
		nm.waitRecovered(ctx, 5*time.Second)
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if _, err := nm.Probe.TransferLeader(tctx, nodeName(i)); err != nil {
			f.Detail += " (transfer: " + shortErr(err) + ")"
		}
		cancel()
		heal = func() {
			h.Node(i).Kill()
			h.SetClockOffset(i, 0)
			h.Start(i)
		}
	case "membership":
		i := pick
		if l := nm.leaderOr(-1); l == i {
			i = other
		}
		f.Detail = "remove and re-add " + nodeName(i)
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := nm.Probe.RemoveMember(rctx, nodeName(i))
		cancel()
		if err != nil {
			f.Err = "remove: " + shortErr(err)
		}
		heal = func() {
			actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for {
				_, err := nm.Probe.AddMember(actx, nodeName(i), h.Node(i).PeerAddr, false)
				if err == nil || actx.Err() != nil {
					if err != nil {
						f.Err += " add: " + shortErr(err)
					}
					return
				}
				sleepCtx(actx, 200*time.Millisecond)
			}
		}
	case "transfer-leader":
		tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := nm.Probe.TransferLeader(tctx, "")
		cancel()
		if err != nil {
			f.Err = shortErr(err)
		} else {
			f.Detail = "to " + resp.GetLeaderName()
		}
		hold = 0
		heal = func() {}
	case "snapshot":
		// Every node snapshots; then one restarts on its snapshot, and an
		// exactly-once result from before the snapshot is asked for again
		// through it.
		probe := nm.startDedupProbe(ctx)
		after = func() { nm.finishDedupProbe(ctx, probe, pick) }
		for i := 0; i < n; i++ {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			if _, err := nm.Probe.Snapshot(sctx, h.clientProxy[i].Listen); err != nil && f.Err == "" {
				f.Err = fmt.Sprintf("snapshot %s: %s", nodeName(i), shortErr(err))
			}
			cancel()
		}
		f.Detail = "snapshot all, restart " + nodeName(pick)
		h.Node(pick).Kill()
		hold = 200 * time.Millisecond
		heal = func() { h.Start(pick) }
	case "hostile-client":
		f.Detail = nm.hostile(ctx, pick, hold)
		hold = 0
		heal = func() {}
	case "pause-holder":
		d, err := nm.pauseHolder(ctx, hold)
		f.Detail = d
		if err != nil {
			f.Err = shortErr(err)
		}
		hold = 0
		heal = func() {}
	case "disk-full":
		// A node's own filesystem filled to the last byte, then given back.
		i := pick
		if nm.Rng.IntN(2) == 0 {
			i = nm.leaderOr(pick)
		}
		filled, err := h.FillDisk(i)
		f.Detail = fmt.Sprintf("%s: %d MiB filled", nodeName(i), filled>>20)
		if err != nil {
			f.Err = "fill: " + shortErr(err)
		}
		heal = func() {
			if err := h.FreeDisk(i); err != nil {
				f.Err += " free: " + shortErr(err)
			}
		}
	}
	if heal == nil { // unknown kind
		f.Err = "unknown fault kind"
		heal, hold = func() {}, 0
	}
	sleepCtx(ctx, hold)
	heal()
	f.Healed = nm.secs()
	healed := time.Now()
	f.Recovered = nm.waitRecovered(context.Background(), 20*time.Second)
	f.RecoveryMs = time.Since(healed).Milliseconds()
	// Every node must be back, or the run ends (Run watches h.Failed).
	if err := h.WaitUp(); err != nil {
		f.Err = shortErr(err)
	}
	if after != nil && f.Recovered {
		after()
	}
	return f
}

// waitRecovered waits until a probe write is acknowledged; it gives up
// when ctx or limit ends or the harness has failed.
func (nm *Nemesis) waitRecovered(ctx context.Context, limit time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for i := 0; ctx.Err() == nil && nm.H.Err() == nil; i++ {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		_, err := nm.Probe.Put(pctx, []byte("probe"), []byte(fmt.Sprint(i)))
		pcancel()
		if err == nil {
			return true
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	return false
}

func names(is []int) []string {
	var s []string
	for _, i := range is {
		s = append(s, nodeName(i))
	}
	return s
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}
