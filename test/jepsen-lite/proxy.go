package main

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections from a fixed listen address to a target,
// under the harness's control. Each direction of bytes can be blackholed
// (read and dropped: the sender sees no error, the receiver sees silence) or
// delayed; Reset closes every open connection. "Up" is the direction from
// the dialler to the target (requests), "down" the answers.
//
// A Raft connection from A to B carries A's requests up and B's answers
// down, so a one-way cut of A→B messages blackholes up on the proxy A→B and
// down on the proxy B→A. A connection whose bytes were dropped is broken
// (the stream lost data); Heal resets such connections so both ends
// reconnect on a clean stream.
type Proxy struct {
	Name   string
	Listen string
	Target string

	ln net.Listener

	mu       sync.Mutex
	dropUp   bool
	dropDown bool
	delay    time.Duration
	conns    map[*proxyConn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

type proxyConn struct {
	in, out net.Conn
	tainted bool // bytes were dropped
}

// NewProxy listens on listen (host:port) and forwards to target.
func NewProxy(name, listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{Name: name, Listen: ln.Addr().String(), Target: target, ln: ln, conns: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		out, err := net.DialTimeout("tcp", p.Target, 2*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		c := &proxyConn{in: in, out: out}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			in.Close()
			out.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, in, out, true)
		go p.pipe(c, out, in, false)
	}
}

// pipe copies src to dst chunk by chunk, applying the direction's state to
// each chunk. It ends (closing both ends) when either side fails.
func (p *Proxy) pipe(c *proxyConn, src, dst net.Conn, up bool) {
	defer p.wg.Done()
	defer func() {
		src.Close()
		dst.Close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			drop := p.dropDown
			if up {
				drop = p.dropUp
			}
			delay := p.delay
			if drop {
				c.tainted = true
			}
			p.mu.Unlock()
			if delay > 0 {
				time.Sleep(delay)
			}
			if !drop {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return // EOF or error: close both ends
		}
	}
}

// Blackhole drops the bytes of the chosen directions from now on.
func (p *Proxy) Blackhole(up, down bool) {
	p.mu.Lock()
	p.dropUp = p.dropUp || up
	p.dropDown = p.dropDown || down
	p.mu.Unlock()
}

// SetDelay delays every chunk, both directions, by d (0: none).
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Heal passes everything again without delay and resets the connections
// that lost bytes while blackholed.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.dropUp, p.dropDown, p.delay = false, false, 0
	var broken []*proxyConn
	for c := range p.conns {
		if c.tainted {
			broken = append(broken, c)
		}
	}
	p.mu.Unlock()
	for _, c := range broken {
		c.in.Close()
		c.out.Close()
	}
}

// Reset closes every open connection (both ends see a reset/EOF).
func (p *Proxy) Reset() int {
	p.mu.Lock()
	var all []*proxyConn
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	for _, c := range all {
		if tc, ok := c.in.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.in.Close()
		c.out.Close()
	}
	return len(all)
}

// Blocked reports whether any direction is blackholed.
func (p *Proxy) Blocked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropUp || p.dropDown
}

// Close stops listening, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Reset()
	p.wg.Wait()
}
