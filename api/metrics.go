package api

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are what the client port measures: every call's latency and
// code, the cache reads this member answered, lock waits and fence
// refusals. Series are named kvd_...; labels name gRPC methods and codes,
// never a key, lock or session.
type metrics struct {
	grpc          *grpcprom.ServerMetrics
	acquireWait   prometheus.Histogram
	fenceRefusals *prometheus.CounterVec
}

// grpcBuckets run from a stale read (~0.5ms) to a write stuck behind an
// election (seconds); waits longer than 30s (queued acquires, fills) fall
// in +Inf.
var grpcBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

func newMetrics() *metrics {
	m := &metrics{
		grpc: grpcprom.NewServerMetrics(
			grpcprom.WithServerCounterOptions(grpcprom.WithNamespace("kvd")),
			grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramNamespace("kvd"),
				grpcprom.WithHistogramBuckets(grpcBuckets)),
		),
		acquireWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvd_lock_acquire_wait_seconds",
			Help:    "Time from the arrival of an Acquire that had to queue to its grant, on the member that served it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
		}),
		fenceRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_lock_fence_refusals_total",
			Help: "Fencing tokens found stale: writes refused (op=write) and CheckFence answers of not valid (op=check).",
		}, []string{"op"}),
	}
	// Both series exist from the start, so a rate over them is defined.
	m.fenceRefusals.WithLabelValues("write")
	m.fenceRefusals.WithLabelValues("check")
	return m
}

// Collector is the client port's metrics for a Prometheus registry: gRPC
// server latency histograms and counters by method and code
// (kvd_grpc_server_*), this member's cache reads (hits, misses, stale
// values served, waits for another's fill), lock acquire waits and fence
// refusals. The node's own series come from node.Node.Collector.
func (s *Server) Collector() prometheus.Collector {
	st := &s.stats
	counter := func(name, help string, v interface{ Load() uint64 }) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	return multiCollector{
		s.metrics.grpc,
		s.metrics.acquireWait,
		s.metrics.fenceRefusals,
		counter("kvd_cache_hits_total", "Cache reads this member answered with a fresh value.", &st.hits),
		counter("kvd_cache_stale_served_total", "Cache reads this member answered with a stale value (serve-stale grace).", &st.staleHits),
		counter("kvd_cache_misses_total", "Cache reads this member answered with no usable value: a miss, or another's fill still running.", &st.misses),
		counter("kvd_cache_fill_waits_total", "Fills that waited for another session's computation instead of computing (single flight).", &st.waits),
	}
}

// multiCollector is several collectors registered as one.
type multiCollector []prometheus.Collector

func (m multiCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m {
		c.Describe(ch)
	}
}

func (m multiCollector) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m {
		c.Collect(ch)
	}
}
