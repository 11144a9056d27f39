package lock_test

import (
	"context"
	"log"
	"time"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/lock"
)

// The README's Go walk-through: a fenced write under a lock, and a memoized
// computation. (Compiled, not run: it needs a cluster.)
func Example() {
	ctx := context.Background()
	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Put(ctx, []byte("greeting"), []byte("hello"), client.WithTTL(30*time.Second)); err != nil {
		log.Fatal(err)
	}

	s, err := lock.NewSession(ctx, c, lock.WithTTL(15*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)
	m := lock.NewMutex(s, "critical_section")
	if err := m.Lock(ctx); err != nil { // waits in a FIFO line
		log.Fatal(err)
	}
	// The store refuses this write once the token no longer holds the lock.
	_, err = c.Put(ctx, []byte("resource"), []byte("data"), client.WithFence([]byte("critical_section"), m.Token()))
	if err != nil {
		log.Fatal(err)
	}
	select {
	case <-m.Lost(): // closed before the server can have released the lock
		log.Print("lock lost: stop touching the resource")
	default:
	}
	if err := m.Unlock(ctx); err != nil {
		log.Fatal(err)
	}

	type Price struct{ Cents int }
	price, err := cache.Memoize(ctx, c, cache.Key("price", "sku-42"), 5*time.Minute, func(ctx context.Context) (Price, error) {
		return Price{Cents: 1999}, nil // runs once across the cluster per TTL
	}, cache.StaleFor(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	log.Print(price.Cents)
}
