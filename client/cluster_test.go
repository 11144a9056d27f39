package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func newClient(t *testing.T, tc *testcluster.Cluster) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: tc.Endpoints, Dialer: tc.Dialer, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestKV(t *testing.T) {
	tc := testcluster.Start(t, 3)
	leader := tc.MustLeader()
	c := newClient(t, tc)
	ctx := t.Context()

	put, err := c.Put(ctx, []byte("a/1"), []byte("one"))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if put.GetKv().GetVersion() != 1 {
		t.Errorf("Put version = %d, want 1", put.GetKv().GetVersion())
	}
	for _, kv := range [][2]string{{"a/2", "two"}, {"a/3", "three"}, {"b/1", "other"}} {
		if _, err := c.Put(ctx, []byte(kv[0]), []byte(kv[1])); err != nil {
			t.Fatalf("Put(%q): %v", kv[0], err)
		}
	}
	// The client found the leader in the background.
	for deadline := time.Now().Add(5 * time.Second); c.Leader() != tc.Endpoints[leader]; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Leader() = %q, want %q", c.Leader(), tc.Endpoints[leader])
		}
	}
	get, err := c.Get(ctx, []byte("a/1"))
	if err != nil || string(get.GetKv().GetValue()) != "one" {
		t.Fatalf("Get(a/1) = %q, %v, want one", get.GetKv().GetValue(), err)
	}
	stale, err := c.Get(ctx, []byte("a/1"), client.WithStale())
	if err != nil {
		t.Fatalf("stale Get: %v", err)
	}
	if !stale.GetHeader().GetStale() {
		t.Errorf("stale Get header.stale = false")
	}

	// Compare-and-set.
	if _, err := c.Put(ctx, []byte("a/1"), []byte("x"), client.WithExpectedVersion(7)); !errors.Is(err, client.ErrVersionMismatch) {
		t.Errorf("Put with a wrong version = %v, want ErrVersionMismatch", err)
	}
	if _, err := c.Put(ctx, []byte("a/1"), []byte("uno"), client.WithExpectedVersion(1)); err != nil {
		t.Errorf("Put with the right version: %v", err)
	}

	list, err := c.List(ctx, []byte("a/"))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var keys []string
	for _, kv := range list.GetKvs() {
		keys = append(keys, string(kv.GetKey()))
	}
	if fmt.Sprint(keys) != "[a/1 a/2 a/3]" || list.GetMore() {
		t.Errorf("List(a/) = %v more=%v, want [a/1 a/2 a/3]", keys, list.GetMore())
	}
	page, err := c.List(ctx, []byte("a/"), client.WithLimit(1), client.WithStartAfter([]byte("a/1")), client.WithKeysOnly())
	if err != nil {
		t.Fatalf("List page: %v", err)
	}
	if len(page.GetKvs()) != 1 || string(page.GetKvs()[0].GetKey()) != "a/2" || !page.GetMore() || len(page.GetKvs()[0].GetValue()) != 0 {
		t.Errorf("List page = %v, want a/2 without value, more", page.GetKvs())
	}

	del, err := c.Delete(ctx, []byte("a/2"))
	if err != nil || del.GetDeleted() != 1 {
		t.Fatalf("Delete = %v, %v, want 1", del.GetDeleted(), err)
	}
	if _, err := c.Get(ctx, []byte("a/2")); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want ErrNotFound", err)
	}
	if del, err := c.Delete(ctx, []byte("a/2")); err != nil || del.GetDeleted() != 0 {
		t.Errorf("second Delete = %v, %v, want 0", del.GetDeleted(), err)
	}

	for i, d := range []int64{5, -2, 10} {
		add, err := c.Add(ctx, []byte("n"), d)
		if err != nil {
			t.Fatalf("Add: %v", err)
		}
		if want := []int64{5, 3, 13}[i]; add.GetValue() != want {
			t.Errorf("Add(%d) = %d, want %d", d, add.GetValue(), want)
		}
	}
	if _, err := c.Add(ctx, []byte("a/1"), 1); !errors.Is(err, client.ErrNotInteger) {
		t.Errorf("Add on text = %v, want ErrNotInteger", err)
	}

	// TTL: the key goes away by itself.
	if _, err := c.Put(ctx, []byte("ttl"), []byte("v"), client.WithTTL(time.Second)); err != nil {
		t.Fatalf("Put with TTL: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Get(ctx, []byte("ttl"))
		if errors.Is(err, client.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key with a 1s TTL still there after 5s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A bad request is InvalidArgument naming the field.
	_, err = c.Put(ctx, make([]byte, 100000), nil)
	var e *client.Error
	if !errors.Is(err, client.ErrInvalidArgument) || !errors.As(err, &e) || e.Field == "" {
		t.Errorf("Put with a huge key = %v, want ErrInvalidArgument with a field", err)
	}
}

// TestExactlyOnceRawHeader sends the same RequestHeader twice: the second
// answer is the first one again and the counter moves once.
func TestExactlyOnceRawHeader(t *testing.T) {
	tc := testcluster.Start(t, 3)
	leader := tc.MustLeader()
	ctx := t.Context()
	sess := kvpb.NewSessionClient(tc.Conn(leader))
	cs, err := sess.Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 10000})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	h := &kvpb.RequestHeader{Session: cs.GetSession().GetId(), Seq: 1, MinPendingSeq: 1}
	// The retry goes to another node, which forwards it.
	var values []int64
	for _, i := range []int{leader, (leader + 1) % 3} {
		r, err := kvpb.NewKVClient(tc.Conn(i)).Add(ctx, &kvpb.AddRequest{Header: h, Key: []byte("c"), Delta: 3})
		if err != nil {
			t.Fatalf("Add on node %d: %v", i, err)
		}
		values = append(values, r.GetValue())
	}
	if values[0] != 3 || values[1] != 3 {
		t.Errorf("Add twice with one header = %v, want [3 3]", values)
	}
	c := newClient(t, tc)
	g, err := c.Get(ctx, []byte("c"))
	if err != nil || string(g.GetKv().GetValue()) != "3" {
		t.Errorf("Get(c) = %q, %v, want 3", g.GetKv().GetValue(), err)
	}
}

// TestWritesAcrossLeaderChange keeps adding while the leader is shut down:
// every acknowledged Add is counted once, and no write fails with anything
// but ErrIndeterminate (never "leader changed").
func TestWritesAcrossLeaderChange(t *testing.T) {
	tc := testcluster.Start(t, 3)
	leader := tc.MustLeader()
	c := newClient(t, tc)
	ctx := t.Context()

	var (
		acked, unknown atomic.Int64
		wg             sync.WaitGroup
		errMu          sync.Mutex
		errs           []error
	)
	stop := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := c.Add(wctx, []byte("counter"), 1)
				cancel()
				switch {
				case err == nil:
					acked.Add(1)
				case errors.Is(err, client.ErrIndeterminate):
					unknown.Add(1)
				default:
					errMu.Lock()
					errs = append(errs, fmt.Errorf("writer %d: %w", w, err))
					errMu.Unlock()
					return
				}
			}
		})
	}
	waitAcked := func(n int64) {
		deadline := time.Now().Add(10 * time.Second)
		for acked.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d Adds acknowledged, want %d", acked.Load(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitAcked(20)
	tc.Stop(leader)
	before := acked.Load()
	waitAcked(before + 20)
	close(stop)
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	tc.MustLeader()
	g, err := c.Get(ctx, []byte("counter"))
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	got, _ := strconv.ParseInt(string(g.GetKv().GetValue()), 10, 64)
	if got < acked.Load() || got > acked.Load()+unknown.Load() {
		t.Errorf("counter = %d, want between %d acknowledged and %d (+ %d unknown)", got, acked.Load(), acked.Load()+unknown.Load(), unknown.Load())
	}
	t.Logf("acked %d, unknown %d, counter %d", acked.Load(), unknown.Load(), got)
}

// cutDialer reaches the cluster until cut, then nothing.
type cutDialer struct {
	dial  func(ctx context.Context, addr string) (net.Conn, error)
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (d *cutDialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		return nil, errors.New("cut off")
	}
	conn, err := d.dial(ctx, addr)
	if err == nil {
		d.conns = append(d.conns, conn)
	}
	return conn, err
}

func (d *cutDialer) Cut() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = true
	for _, c := range d.conns {
		c.Close()
	}
}

// TestSessionDoneBeforeServerExpiry cuts a session's client off from the
// cluster and checks that Done closes while the server still holds it.
func TestSessionDoneBeforeServerExpiry(t *testing.T) {
	tc := testcluster.Start(t, 3)
	tc.MustLeader()
	d := &cutDialer{dial: tc.Dialer}
	c, err := client.New(client.Config{Endpoints: tc.Endpoints, Dialer: d.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	watcher := newClient(t, tc)
	ctx := t.Context()
	const ttl = 2 * time.Second
	s, err := c.NewSession(ctx, ttl, "test")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	// Keepalives work for a while.
	time.Sleep(ttl)
	select {
	case <-s.Done():
		t.Fatalf("Done closed while keepalives work: %v", s.Err())
	default:
	}
	if s.Info().GetId() != s.ID() {
		t.Errorf("Info().Id = %d, want %d", s.Info().GetId(), s.ID())
	}

	d.Cut()
	dl := s.Deadline()
	<-s.Done()
	if now := time.Now(); now.Before(dl) {
		t.Errorf("Done closed %v before Deadline()", dl.Sub(now))
	}
	if err := s.Err(); !errors.Is(err, client.ErrSessionLost) {
		t.Fatalf("Err() = %v, want ErrSessionLost", err)
	}
	// The server must still hold the session.
	g, err := watcher.GetSession(ctx, s.ID())
	if err != nil {
		t.Fatalf("GetSession right after Done closed: %v (the server expired it first)", err)
	}
	if left := time.Duration(g.GetSession().GetExpiresAt() - g.GetHeader().GetLogTime()); left <= 0 {
		t.Errorf("session expires %v after log time: already due", left)
	} else {
		t.Logf("Done closed %v before the server's deadline", left)
	}
}

func TestSessionLocksAndFence(t *testing.T) {
	tc := testcluster.Start(t, 3)
	tc.MustLeader()
	c := newClient(t, tc)
	ctx := t.Context()
	s1, err := c.NewSession(ctx, 5*time.Second, "one")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	s2, err := c.NewSession(ctx, 5*time.Second, "two")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	a1, err := s1.Acquire(ctx, []byte("L"), 0, 0)
	if err != nil || !a1.GetAcquired() {
		t.Fatalf("Acquire = %v, %v, want acquired", a1, err)
	}
	// s2 waits in line; s1 releases; s2 is granted within its wait.
	got := make(chan *kvpb.AcquireResponse, 1)
	go func() {
		r, err := s2.Acquire(ctx, []byte("L"), 5*time.Second, 0)
		if err != nil {
			t.Errorf("waiting Acquire: %v", err)
		}
		got <- r
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := s1.Put(ctx, []byte("fenced"), []byte("1"), client.WithFence([]byte("L"), a1.GetToken())); err != nil {
		t.Fatalf("fenced Put by the holder: %v", err)
	}
	if _, err := s1.Release(ctx, []byte("L"), a1.GetToken()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	a2 := <-got
	if !a2.GetAcquired() || a2.GetToken() <= a1.GetToken() {
		t.Fatalf("second Acquire = %v, want acquired with a larger token than %d", a2, a1.GetToken())
	}
	_, err = s1.Put(ctx, []byte("fenced"), []byte("2"), client.WithFence([]byte("L"), a1.GetToken()))
	var e *client.Error
	if !errors.Is(err, client.ErrFenceFailed) || !errors.As(err, &e) || e.CurrentToken != a2.GetToken() {
		t.Errorf("fenced Put with the old token = %v, want ErrFenceFailed with current token %d", err, a2.GetToken())
	}
	if _, err := s1.Release(ctx, []byte("L"), a1.GetToken()); !errors.Is(err, client.ErrStaleToken) {
		t.Errorf("Release with the old token = %v, want ErrStaleToken", err)
	}
	if err := s2.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := c.GetSession(ctx, s2.ID()); err == nil {
		t.Errorf("GetSession after Close succeeded")
	}
	fence, err := c.CheckFence(ctx, []byte("L"), a2.GetToken())
	if err != nil || fence.GetValid() {
		t.Errorf("CheckFence after the holder closed = %v, %v, want not valid", fence, err)
	}
	s1.Close(ctx)
}

func TestClusterCalls(t *testing.T) {
	tc := testcluster.Start(t, 3)
	leader := tc.MustLeader()
	c := newClient(t, tc)
	ctx := t.Context()
	// Client addresses reach the member list through the log: wait for all.
	var m *kvpb.MembersResponse
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if m, err = c.Members(ctx); err != nil {
			t.Fatalf("Members: %v", err)
		}
		known := 0
		for _, mm := range m.GetMembers() {
			if mm.GetClientAddr() != "" {
				known++
			}
		}
		if known == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Members = %v, want 3 with client addresses", m.GetMembers())
		}
	}
	if len(m.GetMembers()) != 3 {
		t.Errorf("Members = %v, want 3", m.GetMembers())
	}
	if got, want := c.Leader(), tc.Endpoints[leader]; got != want {
		t.Errorf("Leader() after Members = %q, want %q", got, want)
	}
	for i, ep := range tc.Endpoints {
		st, err := c.Status(ctx, ep)
		if err != nil {
			t.Fatalf("Status(%s): %v", ep, err)
		}
		if st.GetName() != tc.Name(i) {
			t.Errorf("Status(%s).Name = %q, want %q", ep, st.GetName(), tc.Name(i))
		}
		if len(st.GetStateHash()) == 0 || st.GetCpuMicros() == 0 {
			t.Errorf("Status(%s): state hash %x, cpu %d us; want both", ep, st.GetStateHash(), st.GetCpuMicros())
		}
		lean, err := c.Status(ctx, ep, client.WithoutStateHash())
		if err != nil || len(lean.GetStateHash()) != 0 || lean.GetCpuMicros() == 0 || lean.GetName() != tc.Name(i) {
			t.Errorf("Status(%s, WithoutStateHash) = hash %x, cpu %d, name %q, %v; want no hash, the rest filled",
				ep, lean.GetStateHash(), lean.GetCpuMicros(), lean.GetName(), err)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := c.Status(sctx, "127.0.99.1:2379"); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("Status of a missing member = %v, want ErrUnavailable", err)
	}
}
