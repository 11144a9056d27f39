package docker

import (
	"encoding/json"
	"sync"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// The Go client retries inside itself and reports none of it, so this test
// binary counts the attempts its gRPC connections make, per method: every
// RPC attempt is one pick of a connection by the load balancer. The client
// dials "passthrough:///addr"; the resolver below takes that scheme over
// (this process only) and gives each connection a balancer that wraps
// pick_first and counts, per method:
//
//   - an attempt that went out on a connection (its Done reports a stream);
//   - an attempt that failed at once because no connection was usable.
//
// A pick that only waits for a connection being made, or that gRPC repeats
// because the picked connection closed before anything was sent, is not an
// attempt. Attempts of a request minus one are the retries it absorbed.

const countingPolicy = "kvd_test_counting"

var attempts = &attemptCounter{n: map[string]int{}}

func init() {
	resolver.Register(passthroughCounting{})
	balancer.Register(countingBuilder{inner: balancer.Get("pick_first")})
}

type attemptCounter struct {
	mu sync.Mutex
	n  map[string]int // by full method name
}

func (c *attemptCounter) add(method string) {
	c.mu.Lock()
	c.n[method]++
	c.mu.Unlock()
}

// get returns the attempts of method so far.
func (c *attemptCounter) get(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method]
}

// passthroughCounting resolves "passthrough:///addr" to addr, as gRPC's own
// passthrough resolver does, with the counting balancer as the policy.
type passthroughCounting struct{}

func (passthroughCounting) Scheme() string { return "passthrough" }

func (passthroughCounting) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	sc := cc.ParseServiceConfig(`{"loadBalancingConfig":[{"` + countingPolicy + `":{}}]}`)
	if sc.Err != nil {
		return nil, sc.Err
	}
	err := cc.UpdateState(resolver.State{
		Addresses:     []resolver.Address{{Addr: target.Endpoint()}},
		ServiceConfig: sc,
	})
	return nopResolver{}, err
}

type nopResolver struct{}

func (nopResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (nopResolver) Close()                                {}

type countingBuilder struct{ inner balancer.Builder }

func (b countingBuilder) Name() string { return countingPolicy }

func (b countingBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return b.inner.Build(&countingClientConn{ClientConn: cc}, opts)
}

// ParseConfig hands pick_first its own (empty) configuration.
func (b countingBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	if p, ok := b.inner.(balancer.ConfigParser); ok {
		return p.ParseConfig(js)
	}
	return nil, nil
}

// countingClientConn wraps every picker pick_first installs.
type countingClientConn struct{ balancer.ClientConn }

func (c *countingClientConn) UpdateState(s balancer.State) {
	s.Picker = countingPicker{s.Picker}
	c.ClientConn.UpdateState(s)
}

type countingPicker struct{ inner balancer.Picker }

func (p countingPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	r, err := p.inner.Pick(info)
	switch {
	case err == balancer.ErrNoSubConnAvailable:
		// gRPC waits for the connection and picks again.
	case err != nil:
		attempts.add(info.FullMethodName)
	default:
		done := r.Done
		r.Done = func(d balancer.DoneInfo) {
			if d.BytesSent {
				attempts.add(info.FullMethodName)
			}
			if done != nil {
				done(d)
			}
		}
	}
	return r, err
}
