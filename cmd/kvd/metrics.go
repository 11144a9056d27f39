package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readiness is what /readyz asks: nil when the member can serve.
type readiness interface{ Ready() error }

// serveMetrics serves, on lis, Prometheus's text format at /metrics (the
// Go runtime and process, the node, the client port, raft's own series),
// /healthz (the process is up) and /readyz (ready.Ready). It returns a
// function that stops the server. Install raftMetrics before raft starts
// so that nothing raft reports early is lost.
//
// Choice: unlike the client port, any address is allowed without
// --insecure. The series hold counts and latencies, never a key, value,
// lock or session name, and a scraper on another host is the usual setup
// (compose, Kubernetes). They do show load and cluster shape to whoever
// can reach the address: listen on loopback or a private network. The
// profiler is never served here (--pprof-addr, loopback only).
func serveMetrics(lis net.Listener, ready readiness, log *slog.Logger, cs ...prometheus.Collector) (stop func(), err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(raftMetrics())
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("metrics serving", "addr", lis.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}
