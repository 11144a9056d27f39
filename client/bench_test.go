package client

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// The client's cost per request, against an in-process server that
// answers at once (over bufconn): the figures include that server's
// work, so compare a client call with the bare generated stub (…Stub)
// for the client's own share. Run with -cpu to vary GOMAXPROCS and
// -benchmem for allocations:
//
//	go test ./client -run - -bench 'Get|KeepAlive' -benchmem

type benchServer struct {
	kvpb.UnimplementedKVServer
}

type benchSessions struct {
	kvpb.UnimplementedSessionServer
}

var benchKV = &kvpb.KeyValue{Key: []byte("00000001"), Value: make([]byte, 256), CreateIndex: 7, ModIndex: 9, Version: 3}

func (benchServer) Get(_ context.Context, req *kvpb.GetRequest) (*kvpb.GetResponse, error) {
	return &kvpb.GetResponse{Header: &kvpb.ResponseHeader{AppliedIndex: 12, LogTime: 34, ServedBy: "n1", Term: 2}, Kv: benchKV}, nil
}

// Pipeline answers every call as Get answers (the benchmarks pipeline
// only Gets), one message per call.
func (benchServer) Pipeline(st kvpb.KV_PipelineServer) error {
	resp, _ := proto.Marshal(&kvpb.GetResponse{Header: &kvpb.ResponseHeader{AppliedIndex: 12, LogTime: 34, ServedBy: "n1", Term: 2}, Kv: benchKV})
	var mu sync.Mutex
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, call := range req.GetCalls() {
			go func() { // as the server runs each call on a worker
				var in kvpb.GetRequest
				if err := proto.Unmarshal(call.GetRequest(), &in); err != nil {
					panic(err)
				}
				mu.Lock()
				defer mu.Unlock()
				st.Send(&kvpb.PipelineResponse{Answers: []*kvpb.PipelineAnswer{{Tag: call.GetTag(), Response: resp}}})
			}()
		}
	}
}

func (benchSessions) KeepAlive(_ context.Context, req *kvpb.KeepAliveRequest) (*kvpb.KeepAliveResponse, error) {
	return &kvpb.KeepAliveResponse{Header: &kvpb.ResponseHeader{AppliedIndex: 12, ServedBy: "n1"},
		Session: &kvpb.SessionInfo{Id: req.GetId(), TtlMs: 60_000, ExpiresAt: 99}}, nil
}

func (benchSessions) KeepAliveStream(st kvpb.Session_KeepAliveStreamServer) error {
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := st.Send(&kvpb.KeepAliveStreamResponse{Tag: req.GetTag(), Id: req.GetId(),
			Header:  &kvpb.ResponseHeader{AppliedIndex: 12, ServedBy: "n1"},
			Session: &kvpb.SessionInfo{Id: req.GetId(), TtlMs: 60_000, ExpiresAt: 99}}); err != nil {
			return err
		}
	}
}

func startBenchServer(b *testing.B) func(ctx context.Context, addr string) (net.Conn, error) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	kvpb.RegisterKVServer(srv, benchServer{})
	kvpb.RegisterSessionServer(srv, benchSessions{})
	go srv.Serve(lis)
	b.Cleanup(srv.Stop)
	return func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }
}

func benchClient(b *testing.B, cfg ...func(*Config)) *Client {
	conf := Config{Endpoints: []string{"n1"}, Dialer: startBenchServer(b)}
	for _, f := range cfg {
		f(&conf)
	}
	c, err := New(conf)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	c.setLeader("n1")
	return c
}

// parallel runs op from 64 goroutines per GOMAXPROCS, each with its own
// per-request deadline as kvctl bench gives one.
func parallel(b *testing.B, op func(ctx context.Context) error) {
	b.ReportAllocs()
	b.SetParallelism(64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := op(ctx)
			cancel()
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGet(b *testing.B) {
	c := benchClient(b)
	key := []byte("00000001")
	parallel(b, func(ctx context.Context) error {
		_, err := c.Get(ctx, key)
		return err
	})
}

// BenchmarkGetUnary is client.Get with each call a unary call of its own
// (Config.NoPipeline), as before the Pipeline stream.
func BenchmarkGetUnary(b *testing.B) {
	c := benchClient(b, func(cfg *Config) { cfg.NoPipeline = true })
	key := []byte("00000001")
	parallel(b, func(ctx context.Context) error {
		_, err := c.Get(ctx, key)
		return err
	})
}

func BenchmarkGetStub(b *testing.B) {
	c := benchClient(b)
	cc, _ := c.conn("n1")
	kv := kvpb.NewKVClient(cc)
	key := []byte("00000001")
	parallel(b, func(ctx context.Context) error {
		_, err := kv.Get(ctx, &kvpb.GetRequest{Key: key})
		return err
	})
}

// BenchmarkKeepAlive renews over the connection's shared stream, as a
// Session does.
func BenchmarkKeepAlive(b *testing.B) {
	c := benchClient(b)
	parallel(b, func(ctx context.Context) error {
		_, err := c.KeepAlive(ctx, 7)
		return err
	})
}

// BenchmarkKeepAliveUnaryStub is one unary KeepAlive call per renewal,
// the way the client renewed before the stream.
func BenchmarkKeepAliveUnaryStub(b *testing.B) {
	c := benchClient(b)
	cc, _ := c.conn("n1")
	s := kvpb.NewSessionClient(cc)
	parallel(b, func(ctx context.Context) error {
		_, err := s.KeepAlive(ctx, &kvpb.KeepAliveRequest{Id: 7})
		return err
	})
}
