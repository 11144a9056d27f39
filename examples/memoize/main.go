// Command memoize shows kvd's cluster-wide single flight: several processes,
// each with many goroutines, memoize the same slow function against a kvd
// cluster, and the function runs once per TTL period across all of them.
//
// Start a cluster (`kvd dev`), then:
//
//	go run ./examples/memoize --procs 3 --goroutines 50 --ttl 5s --duration 12s
//
// The program re-executes itself as --procs worker processes. Each run of
// the function increments a kvd counter (client.Add), so the count is
// cluster-wide; at the end the parent prints it with the number of callers
// served.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
)

type config struct {
	endpoints  string
	procs      int
	goroutines int
	ttl        time.Duration
	duration   time.Duration
	work       time.Duration
	interval   time.Duration
	worker     int // > 0: this process is worker number worker
	runID      string
}

// report is what a worker prints on its last line.
type report struct {
	Worker int         `json:"worker"`
	Served uint64      `json:"served"`
	Errors uint64      `json:"errors"`
	Stats  cache.Stats `json:"stats"`
}

// quote is the slow function's result.
type quote struct {
	ComputedBy  int       `json:"computed_by"`
	ComputedAt  time.Time `json:"computed_at"`
	Description string    `json:"description"`
}

func main() {
	var cfg config
	flag.StringVar(&cfg.endpoints, "endpoints", "127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579", "client addresses of the cluster")
	flag.IntVar(&cfg.procs, "procs", 3, "worker processes")
	flag.IntVar(&cfg.goroutines, "goroutines", 50, "goroutines per worker process")
	flag.DurationVar(&cfg.ttl, "ttl", 5*time.Second, "TTL of the memoized value")
	flag.DurationVar(&cfg.duration, "duration", 12*time.Second, "how long the workers keep calling")
	flag.DurationVar(&cfg.work, "work", 500*time.Millisecond, "how long the slow function takes")
	flag.DurationVar(&cfg.interval, "interval", 20*time.Millisecond, "pause between two calls of one goroutine")
	flag.IntVar(&cfg.worker, "worker", 0, "internal: run as worker N")
	flag.StringVar(&cfg.runID, "run-id", "", "internal: the run's id")
	flag.Parse()

	var err error
	if cfg.worker > 0 {
		err = runWorker(cfg)
	} else {
		err = runParent(cfg)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "memoize: %v\n", err)
		os.Exit(1)
	}
}

func newClient(cfg config) (*client.Client, error) {
	return client.New(client.Config{Endpoints: strings.Split(cfg.endpoints, ",")})
}

func counterKey(runID string) []byte { return []byte("examples/memoize/" + runID + "/runs") }

func runParent(cfg config) error {
	cfg.runID = strconv.FormatInt(time.Now().UnixNano(), 36)
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Printf("run %s: %d processes x %d goroutines memoizing one %v function, TTL %v, for %v\n",
		cfg.runID, cfg.procs, cfg.goroutines, cfg.work, cfg.ttl, cfg.duration)
	reports := make([]report, cfg.procs)
	errs := make([]error, cfg.procs)
	var wg sync.WaitGroup
	for i := 0; i < cfg.procs; i++ {
		cmd := exec.Command(exe,
			"--worker", strconv.Itoa(i+1), "--run-id", cfg.runID,
			"--endpoints", cfg.endpoints, "--goroutines", strconv.Itoa(cfg.goroutines),
			"--ttl", cfg.ttl.String(), "--duration", cfg.duration.String(),
			"--work", cfg.work.String(), "--interval", cfg.interval.String())
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(out)
			var last string
			for sc.Scan() {
				last = sc.Text()
			}
			if err := cmd.Wait(); err != nil {
				errs[i] = fmt.Errorf("worker %d: %w", i+1, err)
				return
			}
			if err := json.Unmarshal([]byte(last), &reports[i]); err != nil {
				errs[i] = fmt.Errorf("worker %d printed %q: %w", i+1, last, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	c, err := newClient(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, counterKey(cfg.runID))
	if err != nil {
		return fmt.Errorf("read the run counter: %w", err)
	}
	runs, _ := strconv.ParseInt(string(resp.GetKv().GetValue()), 10, 64)

	var served, failed uint64
	for _, r := range reports {
		s := r.Stats
		fmt.Printf("  worker %d: served %d callers (%d hits, %d stale, %d misses of which %d waited for another's fill), computed %d, %d errors\n",
			r.Worker, r.Served, s.Hits, s.StaleServed, s.Misses, s.FillsDeduplicated, s.Fills, r.Errors)
		served += r.Served
		failed += r.Errors
	}
	periods := int64(cfg.duration/cfg.ttl) + 1
	fmt.Printf("the function ran %d times in the whole cluster (once per TTL period: at most %d) and served %d callers (%d errors)\n",
		runs, periods, served, failed)
	return nil
}

func runWorker(cfg config) error {
	c, err := newClient(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	cc := cache.New(c, "example")
	key := cache.Key("slowQuote", cfg.runID)
	slow := func(ctx context.Context) (quote, error) {
		select {
		case <-time.After(cfg.work):
		case <-ctx.Done():
			return quote{}, ctx.Err()
		}
		if _, err := c.Add(ctx, counterKey(cfg.runID), 1); err != nil {
			return quote{}, err
		}
		return quote{ComputedBy: cfg.worker, ComputedAt: time.Now(), Description: "an expensive answer"}, nil
	}

	end := time.Now().Add(cfg.duration)
	var served, failed atomic.Uint64
	var wg sync.WaitGroup
	for g := 0; g < cfg.goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := cache.MemoizeIn(ctx, cc, key, cfg.ttl, slow)
				cancel()
				if err != nil {
					failed.Add(1)
					fmt.Fprintf(os.Stderr, "worker %d: %v\n", cfg.worker, err)
				} else {
					served.Add(1)
				}
				time.Sleep(cfg.interval)
			}
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cache.Close(ctx, c)
	return json.NewEncoder(os.Stdout).Encode(report{Worker: cfg.worker, Served: served.Load(), Errors: failed.Load(), Stats: cc.Stats()})
}
