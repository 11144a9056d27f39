package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/internal/proccluster"
	"github.com/kvdproject/kvd/internal/rawh2"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Memory under issue 11's hostile requests, measured on real processes:
// each benchmark reports a member's RSS before and at its peak during the
// attack (sampled every 100 ms through Cluster.Status). They assert
// nothing; run them with
//
//	go test ./test/e2e -run '^$' -bench Hostile -benchtime 1x
//
// KVD_BENCH_KVD=path measures another kvd binary (a build from before the
// change; it must accept the flags used here, which are all older).

func benchCluster(b *testing.B) *proccluster.Cluster {
	b.Helper()
	if testing.Short() {
		b.Skip("starts real kvd processes")
	}
	return proccluster.Start(b, 3, proccluster.Options{Kvd: os.Getenv("KVD_BENCH_KVD")})
}

func benchConn(b *testing.B, addr string) *grpc.ClientConn {
	b.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return cc
}

// peakRSS samples nd's RSS every 100 ms until stop is closed and returns
// the largest.
func peakRSS(nd *proccluster.Node, stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if st, err := nd.Status(ctx); err == nil {
				peak = max(peak, st.GetRssBytes())
			}
			cancel()
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

func rssOf(b *testing.B, nd *proccluster.Node) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := nd.Status(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return st.GetRssBytes()
}

func reportRSS(b *testing.B, before, peak uint64) {
	b.ReportMetric(float64(before>>20), "MiB-before")
	b.ReportMetric(float64(peak>>20), "MiB-peak")
}

// BenchmarkHostileList: 2,048 values of 64 KiB (134 MB); four Lists with
// limit 10,000 at once, each followed to its end.
func BenchmarkHostileList(b *testing.B) {
	cl := benchCluster(b)
	ctx := context.Background()
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	kv := kvpb.NewKVClient(benchConn(b, leader.ClientAddr))
	val := bytes.Repeat([]byte{'v'}, 64<<10)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 2048; i += 8 {
				if _, err := kv.Put(ctx, &kvpb.PutRequest{Key: []byte(fmt.Sprintf("l/%05d", i)), Value: val}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	before := rssOf(b, leader)
	stop := make(chan struct{})
	peak := peakRSS(leader, stop)
	var pages atomic.Int64
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var after []byte
			for i := 0; i < 10000; i++ {
				resp, err := kv.List(ctx, &kvpb.ListRequest{Prefix: []byte("l/"), StartAfter: after, Limit: 10000})
				if err != nil {
					b.Error(err)
					return
				}
				pages.Add(1)
				if !resp.GetMore() || len(resp.GetKvs()) == 0 {
					return
				}
				after = resp.GetKvs()[len(resp.GetKvs())-1].GetKey()
			}
		}()
	}
	wg.Wait()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	reportRSS(b, before, <-peak)
	b.ReportMetric(float64(pages.Load())/4, "pages/list")
}

// BenchmarkHostileUnread: one HTTP/2 connection, 400 Gets of a 1 MiB
// value, none of the answers read for 5 s.
func BenchmarkHostileUnread(b *testing.B) {
	cl := benchCluster(b)
	ctx := context.Background()
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	kv := kvpb.NewKVClient(benchConn(b, leader.ClientAddr))
	if _, err := kv.Put(ctx, &kvpb.PutRequest{Key: []byte("big"), Value: bytes.Repeat([]byte{'x'}, 1<<20-64)}); err != nil {
		b.Fatal(err)
	}
	before := rssOf(b, leader)
	stop := make(chan struct{})
	peak := peakRSS(leader, stop)
	h, err := rawh2.Dial(leader.ClientAddr, 2*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	get, _ := proto.Marshal(&kvpb.GetRequest{Key: []byte("big")})
	for i := 0; i < 400; i++ {
		if _, err := h.Call("/kvd.v1.KV/Get", get, 30*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(5 * time.Second)
	close(stop)
	reportRSS(b, before, <-peak)
	t := h.Read(time.Second)
	b.ReportMetric(float64(t.Answering), "answers-built")
}

// BenchmarkHostileDedup: 150 puts of 1 MB to one key under one session,
// each with a new seq and min_pending_seq left at 1; then a snapshot.
func BenchmarkHostileDedup(b *testing.B) {
	cl := benchCluster(b)
	ctx := context.Background()
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cc := benchConn(b, leader.ClientAddr)
	kv := kvpb.NewKVClient(cc)
	sess, err := kvpb.NewSessionClient(cc).Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 600_000})
	if err != nil {
		b.Fatal(err)
	}
	id := sess.GetSession().GetId()
	var befores []uint64
	for _, nd := range cl.Nodes {
		befores = append(befores, rssOf(b, nd))
	}
	for i := 1; i <= 150; i++ {
		v := bytes.Repeat([]byte{byte(i)}, 1_000_000)
		if _, err := kv.Put(ctx, &kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: id, Seq: uint64(i), MinPendingSeq: 1}, Key: []byte("d"), Value: v}); err != nil {
			b.Fatal(err)
		}
	}
	var grew uint64
	for i, nd := range cl.Nodes {
		if _, err := kvpb.NewClusterClient(benchConn(b, nd.ClientAddr)).Snapshot(ctx, &kvpb.SnapshotRequest{}); err != nil {
			b.Fatal(err)
		}
		grew = max(grew, rssOf(b, nd)-min(befores[i], rssOf(b, nd)))
	}
	b.ReportMetric(float64(grew>>20), "MiB-grown-max")
	b.ReportMetric(float64(newestSnapshotSize(b, cl.Nodes[0].DataDir)>>10), "KiB-snapshot")
}

// BenchmarkHostileSessionFlood: 32 goroutines create sessions (TTL 60 s)
// for 20 s.
func BenchmarkHostileSessionFlood(b *testing.B) {
	cl := benchCluster(b)
	ctx := context.Background()
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	sc := kvpb.NewSessionClient(benchConn(b, leader.ClientAddr))
	before := rssOf(b, leader)
	stop := make(chan struct{})
	peak := peakRSS(leader, stop)
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var created, refused atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fctx.Err() == nil {
				if _, err := sc.Create(fctx, &kvpb.CreateSessionRequest{TtlMs: 60_000, Name: "flood"}); err == nil {
					created.Add(1)
				} else if fctx.Err() == nil {
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	reportRSS(b, before, <-peak)
	b.ReportMetric(float64(created.Load()), "sessions-created")
	b.ReportMetric(float64(refused.Load()), "sessions-refused")
}
