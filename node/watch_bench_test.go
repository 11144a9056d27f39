package node

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// BenchmarkWatchPublish is what apply pays per entry for the hub: the
// same with no watcher and with 10,000 (the dispatcher, not apply, pays
// for them).
func BenchmarkWatchPublish(b *testing.B) {
	for _, n := range []int{0, 10000} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			l := newHubLog(b, WatchConfig{Buffer: 1 << 20})
			for i := range n {
				w, err := l.h.Watch(context.Background(), WatchSpec{Key: []byte(fmt.Sprintf("k%d", i)), After: 0})
				if err != nil {
					b.Fatal(err)
				}
				defer w.Close()
			}
			data, _ := proto.Marshal(&kvpb.Command{Stamp: hubT0, Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte("k1"), Value: make([]byte, 100)}}})
			b.ReportAllocs()
			i := uint64(0)
			for b.Loop() {
				i++
				_, evs := l.f.ApplyEvents(i, data)
				l.h.Publish(i, evs)
			}
		})
	}
}

// BenchmarkWatchFanout: each put reaches every watcher of one prefix;
// ns/op is per put, all its deliveries included (watchers reading as fast
// as they can).
func BenchmarkWatchFanout(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			l := newHubLog(b, WatchConfig{Buffer: 1 << 20})
			data, _ := proto.Marshal(&kvpb.Command{Stamp: hubT0, Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte("p/k"), Value: make([]byte, 100)}}})
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range n {
				w, err := l.h.Watch(context.Background(), WatchSpec{Key: []byte("p/"), Prefix: true, After: 0})
				if err != nil {
					b.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer w.Close()
					<-start
					for got := 0; got < b.N; {
						bt, err := w.Next(context.Background())
						if err != nil {
							b.Error(err)
							return
						}
						got += len(bt.Events)
					}
				}()
			}
			b.ReportAllocs()
			b.ResetTimer()
			close(start)
			for i := 1; i <= b.N; i++ {
				_, evs := l.f.ApplyEvents(uint64(i), data)
				l.h.Publish(uint64(i), evs)
			}
			wg.Wait()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}
