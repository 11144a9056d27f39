// Command memoworker is a test program for test/e2e: one process with
// --goroutines callers memoizing the same key through cache.Memoize. Each run
// of the function adds 1 to the kvd counter --counter (cluster-wide count of
// computations) and prints "computing" on stdout; after the callers return,
// it prints one JSON line: what they got.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
)

type report struct {
	Pid    int            `json:"pid"`
	Served int            `json:"served"`
	Errors []string       `json:"errors"`
	Values map[string]int `json:"values"`
	Stats  cache.Stats    `json:"stats"`
}

func main() {
	endpoints := flag.String("endpoints", "", "kvd client addresses")
	key := flag.String("key", "e2e", "cache key")
	counter := flag.String("counter", "e2e-computations", "kvd counter of computations")
	goroutines := flag.Int("goroutines", 50, "callers in this process")
	ttl := flag.Duration("ttl", time.Minute, "value TTL")
	lease := flag.Duration("fill-lease", 10*time.Second, "fill lease")
	work := flag.Duration("work", 300*time.Millisecond, "how long one computation takes (ignores cancellation)")
	timeout := flag.Duration("timeout", 60*time.Second, "bound of each caller")
	flag.Parse()

	c, err := client.New(client.Config{Endpoints: strings.Split(*endpoints, ",")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "memoworker:", err)
		os.Exit(1)
	}
	defer c.Close()
	cc := cache.New(c, "e2e")
	var stdout sync.Mutex
	fn := func(ctx context.Context) (string, error) {
		actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Add(actx, []byte(*counter), 1); err != nil {
			return "", fmt.Errorf("count computation: %w", err)
		}
		stdout.Lock()
		fmt.Println("computing")
		stdout.Unlock()
		time.Sleep(*work) // a computation that does not stop when asked
		return fmt.Sprint(os.Getpid()), nil
	}

	rep := report{Pid: os.Getpid(), Values: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < *goroutines; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			v, err := cache.MemoizeIn(ctx, cc, *key, *ttl, fn, cache.FillLease(*lease))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rep.Errors = append(rep.Errors, err.Error())
				return
			}
			rep.Served++
			rep.Values[v]++
		}()
	}
	wg.Wait()
	rep.Stats = cc.Stats()
	b, _ := json.Marshal(rep)
	stdout.Lock()
	fmt.Println(string(b))
	stdout.Unlock()
}
