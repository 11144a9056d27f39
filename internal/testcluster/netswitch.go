package testcluster

import (
	"context"
	"errors"
	"net"
	"sync"
)

// NetSwitch is a client's network that a test can cut: Cut closes every
// connection made through Dial and refuses new ones, as a partition of the
// client would.
//
//	sw := testcluster.NewNetSwitch(c.Dialer)
//	cl, _ := client.New(client.Config{Endpoints: c.Endpoints, Dialer: sw.Dial})
//	sw.Cut()
type NetSwitch struct {
	dial  func(context.Context, string) (net.Conn, error)
	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

// NewNetSwitch returns a switch in front of dial, connected.
func NewNetSwitch(dial func(context.Context, string) (net.Conn, error)) *NetSwitch {
	return &NetSwitch{dial: dial}
}

// Dial dials through the switch: refused once it is cut.
func (f *NetSwitch) Dial(ctx context.Context, addr string) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errors.New("testcluster: network cut")
	}
	c, err := f.dial(ctx, addr)
	if err == nil {
		f.conns = append(f.conns, c)
	}
	return c, err
}

// Cut closes the connections and refuses new ones.
func (f *NetSwitch) Cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = true
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// Heal lets Dial connect again after Cut.
func (f *NetSwitch) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = false
}
