package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kvdproject/kvd/internal/proccluster"
)

// A plantedBug is a bug compiled into kvd only under the kvdbugs build tag
// and switched on with kvd's --test-bug flag (that flag exists only in
// such a build). Each comes with the short run that should expose it and
// the checker that must catch it.
type plantedBug struct {
	Name     string
	What     string
	Duration time.Duration
	Kinds    []string // fault kinds of its run
	Checkers []string // the verdicts of which one must fail
}

// kvdBug is the name kvd knows a planted bug by: the entry's name up to a
// "/" (one bug in kvd may have an entry for each checker that must catch
// it, "lock-ignore-expiry/election" say).
func kvdBug(name string) string {
	b, _, _ := strings.Cut(name, "/")
	return b
}

var plantedBugs = []plantedBug{
	{"stale-read", "linearizable reads served from local state, without ReadIndex",
		25 * time.Second, []string{"isolate-leader", "one-way", "client-cut", "pause-leader", "split"}, []string{"linearizable-register"}},
	{"lock-ignore-expiry", "acquire grants a held lock without checking that the holder's session expired",
		15 * time.Second, []string{"transfer-leader", "reset"}, []string{"lock"}},
	// The same bug, which must show in elections too: a candidate made
	// leader while the last leader's session lives.
	{"lock-ignore-expiry/election", "acquire grants a held lock (an election's leader) without checking that the holder's session expired",
		15 * time.Second, []string{"transfer-leader", "reset"}, []string{"election"}},
	{"txn-partial", "a transaction applies only the first op of the branch it runs (and answers the others as done)",
		15 * time.Second, []string{"transfer-leader", "kill-one"}, []string{"bank"}},
	{"ttl-wall-clock", "reads judge TTL expiry on the node's wall clock instead of log time",
		25 * time.Second, []string{"clock"}, []string{"ttl"}},
	{"unfenced-store", "cache Store accepted without checking the fill lease token",
		30 * time.Second, []string{"transfer-leader", "reset"}, []string{"memoize"}},
	{"no-dedup", "exactly-once deduplication disabled: a retried command applies again",
		25 * time.Second, []string{"client-delay"}, []string{"exactly-once-counter"}},
	// Subtle ones: each is one line in kvd, and each shows only to a check
	// that judges the server by the client's own clock or counts.
	{"ttl-off-by-one", "expiry handles one key deadline past the due ones (the loop checks after, not before)",
		20 * time.Second, []string{"transfer-leader"}, []string{"ttl"}},
	{"renewal-keeps-deadline", "a renewed session still expires at its first deadline (the deadline index is not moved)",
		20 * time.Second, []string{"transfer-leader"}, []string{"session-lease"}},
	{"dedup-lost-on-restore", "exactly-once results are dropped when a snapshot is restored (installed or at start)",
		30 * time.Second, []string{"snapshot"}, []string{"exactly-once-counter", "convergence"}},
	{"lock-delay-ignored", "an involuntary release (expiry, break) starts no lock-delay",
		25 * time.Second, []string{"pause-holder"}, []string{"lock"}},
	{"log-time-fast", "the leader's clock, and with it log time, runs 10% fast",
		20 * time.Second, []string{"transfer-leader"}, []string{"ttl"}},
	{"fill-lease-half", "a fill lease is handed to the next caller once half of it has run",
		25 * time.Second, []string{"transfer-leader"}, []string{"memoize"}},
	{"watch-drop-event", "the watch hub loses one change in about 150 on its way to a watcher",
		15 * time.Second, []string{"transfer-leader", "kill-one"}, []string{"watch"}},
	{"watch-reorder-event", "the watch hub now and then delivers a change after the one that followed it",
		15 * time.Second, []string{"transfer-leader", "kill-one"}, []string{"watch"}},
}

// registerBugFlag defines --bug: one run with one planted bug enabled.
func registerBugFlag(cfg *Config) {
	var names []string
	for _, b := range plantedBugs {
		names = append(names, b.Name)
	}
	flag.StringVar(&cfg.Bug, "bug", "", "run with this planted bug (builds kvd with -tags kvdbugs): "+strings.Join(names, ", "))
}

// SelfTest builds kvd with the kvdbugs tag and runs each planted bug runs
// times (short runs, fault kinds chosen to expose it). It fails unless the
// bug's checker catches it in at least 90% of the runs (all of them for
// fewer than 10 runs). A run where a bug is caught by another checker too
// is fine; one where nothing fails is a miss.
func SelfTest(cfg Config, runs int) error {
	lg := logf(cfg.Log)
	if cfg.Out == "" {
		d, err := os.MkdirTemp("", "jepsen-lite-selftest-")
		if err != nil {
			return err
		}
		cfg.Out = d
	}
	kvd := cfg.Kvd // a prebuilt kvdbugs binary, or build one
	if kvd == "" {
		bin := filepath.Join(cfg.Out, "bin")
		os.MkdirAll(bin, 0o755)
		k, err := proccluster.Build(bin, "kvdbugs")
		if err != nil {
			return err
		}
		kvd = k
	}
	need := runs - runs/10 // 9 of 10
	var failed []string
	for _, b := range plantedBugs {
		if cfg.Bug != "" && cfg.Bug != b.Name {
			continue
		}
		caught := 0
		for r := 0; r < runs; r++ {
			rc := cfg
			rc.Kvd, rc.Bug, rc.Duration, rc.Kinds = kvd, b.Name, b.Duration, b.Kinds
			rc.Seed = cfg.Seed + uint64(r)
			rc.Out = filepath.Join(cfg.Out, fmt.Sprintf("%s-%d", strings.ReplaceAll(b.Name, "/", "-"), r))
			rc.Log = nil
			s, err := Run(rc)
			if err != nil {
				lg("%s run %d: %v", b.Name, r, err)
				continue
			}
			var by []string
			hit := false
			for _, v := range s.Verdicts {
				if !v.Pass {
					by = append(by, v.Name)
					hit = hit || slices.Contains(b.Checkers, v.Name)
				}
			}
			if hit {
				caught++
			}
			lg("%-18s run %d/%d (seed %d): %d ops, %d faults, caught=%v by %v", b.Name, r+1, runs, rc.Seed, s.Ops, len(s.Faults), hit, by)
		}
		fmt.Printf("planted bug %-22s caught in %2d/%d runs by %s (%s)\n", b.Name, caught, runs, strings.Join(b.Checkers, " or "), b.What)
		if caught < need {
			failed = append(failed, fmt.Sprintf("%s caught %d/%d", b.Name, caught, runs))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("planted bugs not caught often enough: %s (results in %s)", strings.Join(failed, "; "), cfg.Out)
	}
	return nil
}
