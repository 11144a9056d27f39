package client_test

import (
	"context"
	"fmt"
	"log"
	"strconv"
	"time"

	"github.com/kvdproject/kvd/client"
)

// Reserve one unit of stock atomically: the transaction decrements the
// stock and records the order only if nobody wrote the stock since it was
// read (its mod index); otherwise it reads the stock again to retry with.
// TestTxnReserveStock runs the same transaction against an in-process
// cluster. (Compiled, not run: it needs the cluster of kvd dev.)
func ExampleClient_Txn() {
	ctx := context.Background()
	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	stock := []byte("stock/sku-42")
	get, err := c.Get(ctx, stock)
	if err != nil {
		log.Fatal(err)
	}
	for attempt := 0; attempt < 10; attempt++ {
		left, err := strconv.Atoi(string(get.GetKv().GetValue()))
		if err != nil || left <= 0 {
			log.Fatalf("sold out (%q)", get.GetKv().GetValue())
		}
		resp, err := c.Txn().
			If(client.Compare(client.ModIndex(stock), "=", get.GetKv().GetModIndex())).
			Then(
				client.OpPut(stock, []byte(strconv.Itoa(left-1))),
				client.OpPut([]byte("orders/1001"), []byte("sku-42"), client.WithIfAbsent()),
			).
			Else(client.OpGet(stock)).
			Commit(ctx) // exactly-once, like every write
		if err != nil {
			log.Fatal(err)
		}
		if resp.GetSucceeded() {
			fmt.Println("reserved; left:", left-1)
			return
		}
		// Someone else wrote the stock in between: the failure branch read
		// it again in the same entry.
		get = resp.GetResults()[0].GetGet()
	}
	log.Fatal("too much contention")
}

// Register a service under a session: the key disappears when the process
// stops keeping the session alive. (Compiled, not run.)
func ExampleWithSession() {
	ctx := context.Background()
	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:2379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession(ctx, 10*time.Second, "api n1")
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx) // deletes the registration at once
	_, err = c.Put(ctx, []byte("services/api/n1"), []byte("10.0.0.5:8080"),
		client.WithSession(s.ID()), client.WithIfAbsent())
	if err != nil {
		log.Fatal(err) // ErrKeyExists: another live session holds the name
	}
	<-s.Done() // serve until the session is lost
}
