package main

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echoServer answers each line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(l))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, msg string, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestProxyBlackholeAndHeal(t *testing.T) {
	target := echoServer(t)
	p, err := NewProxy("test", "127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "a", time.Second); err != nil || got != "a\n" {
		t.Fatalf("roundTrip(a) = %q, %v; want %q", got, err, "a\n")
	}
	for _, dir := range []struct{ up, down bool }{{true, false}, {false, true}} {
		p.Blackhole(dir.up, dir.down)
		if got, err := roundTrip(c, r, "b", 200*time.Millisecond); err == nil {
			t.Fatalf("blackholed (up %v down %v): got %q, want a timeout", dir.up, dir.down, got)
		}
		p.Heal()
		// The tainted connection was reset; a new one works.
		c.Close()
		c, err = net.Dial("tcp", p.Listen)
		if err != nil {
			t.Fatal(err)
		}
		r = bufio.NewReader(c)
		if got, err := roundTrip(c, r, "c", time.Second); err != nil || got != "c\n" {
			t.Fatalf("after heal: roundTrip(c) = %q, %v", got, err)
		}
	}
}

func TestProxyDelayAndReset(t *testing.T) {
	target := echoServer(t)
	p, err := NewProxy("test", "127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	p.SetDelay(50 * time.Millisecond)
	start := time.Now()
	if _, err := roundTrip(c, r, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("delayed round trip took %v, want >= 100ms", d)
	}
	if n := p.Reset(); n != 1 {
		t.Errorf("Reset() = %d connections, want 1", n)
	}
	if _, err := roundTrip(c, r, "b", time.Second); err == nil {
		t.Errorf("round trip after Reset succeeded, want an error")
	}
}
