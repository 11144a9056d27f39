package api_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// benchCluster starts an in-process three-node cluster (in-memory log, no
// disk, bufconn gRPC) and returns it with its leader's index. The figures
// are the CPU cost of the api, raft and fsm path; `kvctl bench` measures a
// real cluster.
func benchCluster(b *testing.B) (*testcluster.Cluster, int) {
	b.Helper()
	c := testcluster.Start(b, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		b.Fatalf("WaitLeader: %v", err)
	}
	return c, l
}

// BenchmarkPut: puts of 256-byte values through the leader, 64 callers.
func BenchmarkPut(b *testing.B) {
	c, l := benchCluster(b)
	client := kv(c, l)
	val := make([]byte, 256)
	var next atomic.Int64
	b.SetParallelism(32) // x GOMAXPROCS callers
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := strconv.Itoa(int(next.Add(1) % 10000))
			if _, err := client.Put(context.Background(), &kvpb.PutRequest{Key: []byte(k), Value: val}); err != nil {
				b.Errorf("Put: %v", err)
				return
			}
		}
	})
}

// BenchmarkGet: reads of one key at each consistency, 64 callers.
func BenchmarkGet(b *testing.B) {
	for _, cons := range []kvpb.Consistency{kvpb.Consistency_CONSISTENCY_LINEARIZABLE, kvpb.Consistency_CONSISTENCY_STALE} {
		b.Run(cons.String(), func(b *testing.B) {
			c, l := benchCluster(b)
			client := kv(c, l)
			if _, err := client.Put(context.Background(), &kvpb.PutRequest{Key: []byte("k"), Value: make([]byte, 256)}); err != nil {
				b.Fatalf("Put: %v", err)
			}
			b.SetParallelism(32)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.Get(context.Background(), &kvpb.GetRequest{Key: []byte("k"), Consistency: cons}); err != nil {
						b.Errorf("Get: %v", err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkKeepAlive: session renewals through the leader, 64 callers
// with a session each, one renewal in flight per caller: unary KeepAlive
// calls, or renewals on a KeepAliveStream per caller. Both share the
// node's KeepAliveBatchOp entries.
func BenchmarkKeepAlive(b *testing.B) {
	for _, mode := range []string{"unary", "stream"} {
		b.Run(mode, func(b *testing.B) {
			c, l := benchCluster(b)
			sess := kvpb.NewSessionClient(c.Conn(l))
			var ids []uint64
			for range 32 * 2 {
				r, err := sess.Create(context.Background(), &kvpb.CreateSessionRequest{TtlMs: 600_000})
				if err != nil {
					b.Fatalf("Create: %v", err)
				}
				ids = append(ids, r.GetSession().GetId())
			}
			var next atomic.Int64
			b.SetParallelism(32)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				id := ids[int(next.Add(1)-1)%len(ids)]
				if mode == "unary" {
					for pb.Next() {
						_, err := sess.KeepAlive(context.Background(), &kvpb.KeepAliveRequest{Id: id})
						if err != nil && !transient(errInfo(err).GetCode()) {
							b.Errorf("KeepAlive: %v", err)
							return
						}
					}
					return
				}
				st, err := sess.KeepAliveStream(context.Background())
				if err != nil {
					b.Errorf("KeepAliveStream: %v", err)
					return
				}
				defer st.CloseSend()
				for tag := uint64(1); pb.Next(); tag++ {
					if err := st.Send(&kvpb.KeepAliveStreamRequest{Id: id, Tag: tag}); err != nil {
						b.Errorf("Send: %v", err)
						return
					}
					if r, err := st.Recv(); err != nil || (r.GetError() != nil && !transient(r.GetError().GetCode())) {
						b.Errorf("Recv: %v %v", err, r.GetError())
						return
					}
				}
			})
		})
	}
}

// transient: a renewal caught in a leader election on a loaded machine
// (the in-process cluster's timeouts are short); renewing again is safe.
func transient(c kvpb.ErrorCode) bool {
	return c == kvpb.ErrorCode_ERROR_CODE_INDETERMINATE || c == kvpb.ErrorCode_ERROR_CODE_NOT_LEADER
}

// BenchmarkClientCalls: the Go client's Get (linearizable, stale) and Put
// through an in-process cluster, 64 callers on one client: each call over
// the connection's Pipeline stream, or as a unary call of its own
// (client.Config.NoPipeline). Client, server and raft together.
func BenchmarkClientCalls(b *testing.B) {
	for _, mode := range []string{"pipeline", "unary"} {
		for _, op := range []string{"get-linearizable", "get-stale", "put"} {
			b.Run(mode+"/"+op, func(b *testing.B) {
				c, _ := benchCluster(b)
				cl, err := client.New(client.Config{Endpoints: c.Endpoints, Dialer: c.Dialer, NoPipeline: mode == "unary"})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { cl.Close() })
				ctx := context.Background()
				val := make([]byte, 256)
				if _, err := cl.Put(ctx, []byte("k"), val); err != nil {
					b.Fatalf("Put: %v", err)
				}
				var next atomic.Int64
				b.SetParallelism(32)
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						var err error
						switch op {
						case "get-linearizable":
							_, err = cl.Get(ctx, []byte("k"))
						case "get-stale":
							_, err = cl.Get(ctx, []byte("k"), client.WithStale())
						case "put":
							_, err = cl.Put(ctx, []byte(strconv.Itoa(int(next.Add(1)%10000))), val)
						}
						if err != nil {
							b.Errorf("%s: %v", op, err)
							return
						}
					}
				})
			})
		}
	}
}
