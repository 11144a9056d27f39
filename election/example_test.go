package election_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/election"
	"github.com/kvdproject/kvd/lock"
)

// Two app servers campaign to run the nightly job; the first leads, the
// second waits in line and takes over the moment the first resigns. An
// observer sees each leader and each value in order. (It runs against an
// in-process cluster; with a real one, give client.Config the endpoints.)
func Example() {
	endpoints, dial, stop := exampleCluster()
	defer stop()
	ctx := context.Background()
	c, err := client.New(client.Config{Endpoints: endpoints, Dialer: dial})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	candidate := func(name string) *election.Election {
		s, err := lock.NewSession(ctx, c, lock.WithTTL(10*time.Second), lock.WithName(name))
		if err != nil {
			log.Fatal(err)
		}
		return election.New(s, "nightly-job")
	}
	host1, host2 := candidate("host-1"), candidate("host-2")

	if err := host1.Campaign(ctx, []byte("host-1")); err != nil {
		log.Fatal(err)
	}
	leader, err := host2.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("leader: %s\n", leader.Value)

	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	observed := host2.Observe(octx)
	fmt.Printf("observed: %s\n", (<-observed).Value)

	elected := make(chan error, 1)
	go func() { elected <- host2.Campaign(ctx, []byte("host-2")) }() // waits in line

	// The leader's work runs under its term's context and token; the token
	// fences what it writes.
	if _, err := c.Put(host1.Context(), []byte("job/last-run"), []byte("ok"),
		client.WithFence([]byte("nightly-job"), host1.Token())); err != nil {
		log.Fatal(err)
	}
	if err := host1.Proclaim(ctx, []byte("host-1 (running)")); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("observed: %s\n", (<-observed).Value)

	first := host1.Token()
	if err := host1.Resign(ctx); err != nil { // host-2 leads at once
		log.Fatal(err)
	}
	if err := <-elected; err != nil {
		log.Fatal(err)
	}
	fmt.Printf("observed: %s\n", (<-observed).Value)
	fmt.Printf("new term, larger token: %v\n", host2.Token() > first)
	// Output:
	// leader: host-1
	// observed: host-1
	// observed: host-1 (running)
	// observed: host-2
	// new term, larger token: true
}
