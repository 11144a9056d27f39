package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
)

// Keys bound to a session go when it ends; if-absent refuses a key that
// exists unless it is bound to the same session.
func TestPutBoundToSession(t *testing.T) {
	tc := testcluster.Start(t, 3)
	c := newClient(t, tc)
	ctx := t.Context()
	s, err := c.NewSession(ctx, 10*time.Second, "registrar")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	k := []byte("services/api/n1")
	put, err := c.Put(ctx, k, []byte("10.0.0.5:8080"), client.WithSession(s.ID()), client.WithIfAbsent())
	if err != nil {
		t.Fatalf("Put WithSession WithIfAbsent: %v", err)
	}
	if put.GetKv().GetSession() != s.ID() {
		t.Errorf("Put kv.session = %d, want %d", put.GetKv().GetSession(), s.ID())
	}
	// The owner may repeat its registration; anyone else may not take it.
	if _, err := c.Put(ctx, k, []byte("10.0.0.5:8080"), client.WithSession(s.ID()), client.WithIfAbsent()); err != nil {
		t.Errorf("Put WithIfAbsent by the same session: %v, want nil", err)
	}
	if _, err := c.Put(ctx, k, []byte("other"), client.WithIfAbsent()); !errors.Is(err, client.ErrKeyExists) {
		t.Errorf("Put WithIfAbsent of a bound key without a session = %v, want ErrKeyExists", err)
	}
	info, err := c.GetSession(ctx, s.ID())
	if err != nil || info.GetSession().GetKeys() != 1 {
		t.Fatalf("GetSession = %v, %v, want keys 1", info.GetSession(), err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Session.Close: %v", err)
	}
	if got, err := c.Get(ctx, k); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Get after the session closed = %v, %v, want ErrNotFound", got.GetKv(), err)
	}
	// A put naming a session that is gone is refused, and the session that
	// makes the put exactly-once (the client's own, or s2) lives on.
	if _, err := c.Put(ctx, k, []byte("x"), client.WithSession(s.ID())); !errors.Is(err, client.ErrSessionExpired) {
		t.Errorf("Put WithSession of a closed session = %v, want ErrSessionExpired", err)
	}
	s2, err := c.NewSession(ctx, 10*time.Second, "other")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	defer s2.Close(ctx)
	if _, err := s2.Put(ctx, k, []byte("x"), client.WithSession(s.ID())); !errors.Is(err, client.ErrSessionExpired) {
		t.Errorf("Session.Put WithSession of a closed session = %v, want ErrSessionExpired", err)
	}
	_, err = s2.Txn().Then(client.OpPut(k, []byte("x"), client.WithSession(s.ID()))).Commit(ctx)
	if !errors.Is(err, client.ErrSessionExpired) {
		t.Errorf("Session.Txn with a put bound to a closed session = %v, want ErrSessionExpired", err)
	}
	select {
	case <-s2.Done():
		t.Errorf("s2 ended (%v) after a put that named another, closed session", s2.Err())
	default:
	}
	if _, err := s2.Put(ctx, k, []byte("y"), client.WithSession(s2.ID())); err != nil {
		t.Errorf("Session.Put bound to itself: %v", err)
	}
}

func TestTouchAndDeletePrefix(t *testing.T) {
	tc := testcluster.Start(t, 3)
	c := newClient(t, tc)
	ctx := t.Context()
	put, err := c.Put(ctx, []byte("a/1"), []byte("one"), client.WithTTL(time.Hour))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	touch, err := c.Touch(ctx, []byte("a/1"), 2*time.Hour)
	if err != nil {
		t.Fatalf("Touch: %v", err)
	}
	kv := touch.GetKv()
	if kv.GetVersion() != put.GetKv().GetVersion() || kv.GetModIndex() != put.GetKv().GetModIndex() || kv.GetExpiresAt() <= put.GetKv().GetExpiresAt() {
		t.Errorf("Touch kv = %v, want version %d and mod index %d kept and a later expiry than %d", kv, put.GetKv().GetVersion(), put.GetKv().GetModIndex(), put.GetKv().GetExpiresAt())
	}
	if touch, err = c.Touch(ctx, []byte("a/1"), 0); err != nil || touch.GetKv().GetExpiresAt() != 0 {
		t.Errorf("Touch with ttl 0 = %v, %v, want no expiry", touch.GetKv(), err)
	}
	if get, err := c.Get(ctx, []byte("a/1")); err != nil || string(get.GetKv().GetValue()) != "one" || get.GetKv().GetExpiresAt() != 0 {
		t.Errorf("Get after Touch = %v, %v, want value one and no expiry", get.GetKv(), err)
	}
	if _, err := c.Touch(ctx, []byte("missing"), time.Minute); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Touch of a missing key = %v, want ErrNotFound", err)
	}

	for _, k := range []string{"a/2", "a/3", "ab", "b/1"} {
		if _, err := c.Put(ctx, []byte(k), []byte("v")); err != nil {
			t.Fatalf("Put(%q): %v", k, err)
		}
	}
	del, err := c.DeletePrefix(ctx, []byte("a/"))
	if err != nil || del.GetDeleted() != 3 {
		t.Fatalf("DeletePrefix(a/) = %v, %v, want 3 deleted", del, err)
	}
	list, err := c.List(ctx, nil)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var keys []string
	for _, kv := range list.GetKvs() {
		keys = append(keys, string(kv.GetKey()))
	}
	if len(keys) != 2 || keys[0] != "ab" || keys[1] != "b/1" {
		t.Errorf("keys after DeletePrefix(a/) = %q, want [ab b/1]", keys)
	}
	if del, err = c.DeletePrefix(ctx, []byte("a/")); err != nil || del.GetDeleted() != 0 {
		t.Errorf("DeletePrefix(a/) again = %v, %v, want 0 deleted", del, err)
	}
}

// The recipe of docs/recipes.md: reserve stock only while there is some.
func TestTxnReserveStock(t *testing.T) {
	tc := testcluster.Start(t, 3)
	c := newClient(t, tc)
	ctx := t.Context()
	stock := []byte("stock/sku-42")
	if _, err := c.Put(ctx, stock, []byte("1")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	reserve := func(order string) (bool, string) {
		t.Helper()
		get, err := c.Get(ctx, stock)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		left := string(get.GetKv().GetValue())
		if left == "0" {
			return false, left
		}
		resp, err := c.Txn().
			If(client.Compare(client.ModIndex(stock), "=", get.GetKv().GetModIndex())).
			Then(client.OpPut(stock, []byte("0")), client.OpPut([]byte("orders/"+order), []byte("sku-42"), client.WithIfAbsent()), client.OpGet(stock)).
			Else(client.OpGet(stock)).
			Commit(ctx)
		if err != nil {
			t.Fatalf("Commit: %v", err)
		}
		r := resp.GetResults()
		return resp.GetSucceeded(), string(r[len(r)-1].GetGet().GetKv().GetValue())
	}
	if ok, left := reserve("1001"); !ok || left != "0" {
		t.Errorf("first reservation = %v, stock %q, want success and 0 left", ok, left)
	}
	if ok, left := reserve("1002"); ok || left != "0" {
		t.Errorf("second reservation = %v, stock %q, want none and 0 left", ok, left)
	}

	// A compare that fails runs the failure branch, which is no error.
	resp, err := c.Txn().
		If(client.Compare(client.Value(stock), "=", "5"), client.Compare(client.Exists([]byte("orders/1001")), "=", true)).
		Then(client.OpDeletePrefix([]byte("orders/"))).
		Else(client.OpGet([]byte("orders/1001")), client.OpGet([]byte("orders/nope"))).
		Commit(ctx)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if resp.GetSucceeded() || len(resp.GetResults()) != 2 {
		t.Fatalf("Commit = %v, want the failure branch with 2 results", resp)
	}
	if got := resp.GetResults()[0].GetGet().GetKv(); string(got.GetValue()) != "sku-42" {
		t.Errorf("failure get orders/1001 = %v, want sku-42", got)
	}
	if got := resp.GetResults()[1].GetGet(); got == nil || got.GetKv() != nil {
		t.Errorf("failure get orders/nope = %v, want a get result without kv", got)
	}

	// An if-absent put of a key that exists refuses the whole branch.
	_, err = c.Txn().Then(client.OpPut([]byte("x"), []byte("1")), client.OpPut([]byte("orders/1001"), []byte("again"), client.WithIfAbsent())).Commit(ctx)
	if !errors.Is(err, client.ErrKeyExists) {
		t.Errorf("Commit with an if-absent put of an existing key = %v, want ErrKeyExists", err)
	}
	if _, err := c.Get(ctx, []byte("x")); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Get(x) after the refused transaction = %v, want ErrNotFound (nothing applied)", err)
	}
	// Refused before proposing: a key written twice in a branch.
	_, err = c.Txn().Then(client.OpPut([]byte("y"), []byte("1")), client.OpDelete([]byte("y"))).Commit(ctx)
	if !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("Commit writing y twice = %v, want ErrInvalidArgument", err)
	}
}

// A lock-token compare makes a write conditional on holding a lock.
func TestTxnLockToken(t *testing.T) {
	tc := testcluster.Start(t, 3)
	c := newClient(t, tc)
	ctx := t.Context()
	s, err := c.NewSession(ctx, 10*time.Second, "holder")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	defer s.Close(ctx)
	acq, err := s.Acquire(ctx, []byte("L"), 0, 0)
	if err != nil || !acq.GetAcquired() {
		t.Fatalf("Acquire = %v, %v", acq, err)
	}
	token := acq.GetToken()
	resp, err := s.Txn().If(client.Compare(client.LockToken([]byte("L")), "=", token)).Then(client.OpPut([]byte("guarded"), []byte("1"))).Commit(ctx)
	if err != nil || !resp.GetSucceeded() {
		t.Fatalf("Session.Txn with the holder's token = %v, %v, want success", resp, err)
	}
	if _, err := s.Release(ctx, []byte("L"), token); err != nil {
		t.Fatalf("Release: %v", err)
	}
	resp, err = c.Txn().If(client.Compare(client.LockToken([]byte("L")), "=", token)).Then(client.OpPut([]byte("guarded"), []byte("2"))).Commit(ctx)
	if err != nil || resp.GetSucceeded() {
		t.Errorf("Txn with a released token = %v, %v, want the failure branch", resp, err)
	}
}
