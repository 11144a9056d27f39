//go:build linux

package node

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvdproject/kvd/internal/tmpfs"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// mountSmall mounts a tmpfs of size bytes on a new directory and unmounts
// it when the test ends; it skips the test where mounting is refused.
func mountSmall(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := tmpfs.Mount(dir, size); err != nil {
		if errors.Is(err, tmpfs.ErrNotPermitted) {
			t.Skipf("needs a tmpfs of its own: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tmpfs.Unmount(dir); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return dir
}

// TestWALAppendsAgainWhenSpaceReturns fills a real filesystem under the
// member's store stack. The next segment cannot be preallocated, so it is
// created without (raft-wal alone would give up the rotation and refuse
// every later append with "segment is sealed" until a restart); appends
// then fail at once for lack of space, the member refuses writes, and once
// the filesystem is grown the same appends go through and every entry is
// there, before and after a reopen.
func TestWALAppendsAgainWhenSpaceReturns(t *testing.T) {
	dir := mountSmall(t, 1<<20)
	g := newDiskGuard(dir, "n1", slog.New(slog.NewTextHandler(io.Discard, nil)), 0, testSegmentBytes, 0, 0,
		func() int64 { return 0 })
	st, err := openStores(dir, LogStoreWAL, hclog.NewNullLogger(), noObserver{}, g, testSegmentBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		g.stop()
		st.close()
	}()
	g.blocking.Store(true) // what setRaft does once raft runs

	store := func(i uint64) error {
		return st.logs.StoreLogs([]*raft.Log{{Index: i, Term: 1, Type: raft.LogCommand, Data: testEntry(i)}})
	}
	var next uint64 = 1
	var failed error
	deadline := time.Now().Add(10 * time.Second)
	for failed == nil && time.Now().Before(deadline) && next < 10000 {
		if err := store(next); err != nil {
			failed = err
			break
		}
		next++
	}
	if failed == nil {
		t.Fatalf("stored %d entries on a 1 MiB filesystem without running out of space", next-1)
	}
	if !strings.Contains(failed.Error(), "data dir full") || !noSpace(failed) {
		t.Fatalf("StoreLogs(%d) = %v, want a data dir full error wrapping ENOSPC", next, failed)
	}
	t.Logf("entry %d refused: %v", next, failed)
	g.check()
	if err := g.refusal(); err == nil {
		t.Fatal("no refusal while a store write waits for space")
	} else if code := err.(*Error).Code; code != kvpb.ErrorCode_ERROR_CODE_DISK_FULL {
		t.Fatalf("refusal code %v, want DISK_FULL", code)
	}
	// Refused at once, not queued behind the waiting segment.
	start := time.Now()
	if err := store(next); err == nil {
		t.Fatal("an append went through while the segment waits for space")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a refused append took %v", d)
	}

	if err := tmpfs.Resize(dir, 4<<20); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for store(next) != nil {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("appends still fail 10s after the filesystem grew: %v", store(next))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("appends resumed %v after the filesystem grew", time.Since(start))
	for i := next + 1; i < next+50; i++ {
		if err := store(i); err != nil {
			t.Fatalf("StoreLogs(%d) after the filesystem grew = %v", i, err)
		}
	}
	g.check()
	if err := g.refusal(); err != nil {
		t.Fatalf("still refusing after the space came back: %v", err)
	}
	g.stop()
	st.close()
	checkTestWAL(t, dir, next+49)
}

// TestReserveAndQuota: below the reserve, or at the quota, writes that add
// data are refused with their own code; deletes are not; a grown
// filesystem lifts the refusal.
func TestReserveAndQuota(t *testing.T) {
	dir := mountSmall(t, 4<<20)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	g := newDiskGuard(dir, "n1", logger, 3<<20, 1<<20, 0, 0, func() int64 { return 0 })
	n := &Node{disk: g, metrics: newMetrics()}
	put := &kvpb.Command{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte("k")}}}
	del := &kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("k")}}}
	code := func(cmd *kvpb.Command) kvpb.ErrorCode {
		g.check()
		var e *Error
		if err := n.refuseWrite(cmd); errors.As(err, &e) {
			return e.Code
		}
		return kvpb.ErrorCode_ERROR_CODE_OK
	}
	if c := code(put); c != kvpb.ErrorCode_ERROR_CODE_OK {
		t.Fatalf("empty filesystem: put refused with %v", c)
	}
	// 2.5 MiB in the data dir: 1.5 MiB free, more than the 1 MiB reserve,
	// under the 3 MiB quota.
	if _, err := tmpfs.Fill(filepath.Join(dir, "a"), 5<<19); err != nil {
		t.Fatal(err)
	}
	if c := code(put); c != kvpb.ErrorCode_ERROR_CODE_OK {
		t.Fatalf("2.5 MiB used: put refused with %v", c)
	}
	// 3.25 MiB: over the quota, 0.75 MiB free, under the reserve. The
	// disk is what is short: DISK_FULL.
	if _, err := tmpfs.Fill(filepath.Join(dir, "b"), 3<<18); err != nil {
		t.Fatal(err)
	}
	if c := code(put); c != kvpb.ErrorCode_ERROR_CODE_DISK_FULL {
		t.Fatalf("3.25 MiB used of 4: put = %v, want DISK_FULL", c)
	}
	if err := n.refuseWrite(put); !strings.Contains(err.Error(), "data dir full: "+dir) {
		t.Fatalf("refusal %q does not name the data dir %s", err, dir)
	}
	if got := testutil.ToFloat64(n.metrics.diskFullRefusals); got != 2 {
		t.Fatalf("kvd_disk_full_refusals_total = %v after two refusals, want 2", got)
	}
	if c := code(del); c != kvpb.ErrorCode_ERROR_CODE_OK {
		t.Fatalf("delete refused with %v", c)
	}
	// Grown to 8 MiB: room again, but still over the quota.
	if err := tmpfs.Resize(dir, 8<<20); err != nil {
		t.Fatal(err)
	}
	if c := code(put); c != kvpb.ErrorCode_ERROR_CODE_QUOTA_EXCEEDED {
		t.Fatalf("over quota with room: put = %v, want QUOTA_EXCEEDED", c)
	}
	if err := n.refuseWrite(put); !strings.Contains(err.Error(), "--quota-bytes is 3.0 MiB") {
		t.Fatalf("quota refusal %q does not name the quota", err)
	}
	if c := code(del); c != kvpb.ErrorCode_ERROR_CODE_OK {
		t.Fatalf("delete over quota refused with %v", c)
	}
	os.Remove(filepath.Join(dir, "b"))
	if c := code(put); c != kvpb.ErrorCode_ERROR_CODE_OK {
		t.Fatalf("space freed: put refused with %v", c)
	}
}

// TestStoreWriteWaitsForSpace: a store write that must not fail (raft's
// term, the WAL's segment list) waits while it fails for lack of space;
// meanwhile appends are refused at once and so are writes that add data,
// and the write completes once it succeeds.
func TestStoreWriteWaitsForSpace(t *testing.T) {
	g := newDiskGuard(t.TempDir(), "n1", slog.New(slog.NewTextHandler(io.Discard, nil)), 0, 0, 0, -1,
		func() int64 { return 0 })
	g.blocking.Store(true)
	defer g.stop()
	room := make(chan struct{})
	attempts := 0
	done := make(chan error, 1)
	go func() {
		done <- g.retry("store raft's CurrentTerm", func() error {
			attempts++
			select {
			case <-room:
				return nil
			default:
				return &os.PathError{Op: "pwrite", Path: "wal-meta.db", Err: syscall.ENOSPC}
			}
		})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for g.stalled() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the failing write never counted as waiting")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.stalled(); !strings.Contains(err.Error(), "data dir full") || !noSpace(err) {
		t.Fatalf("stalled() = %v, want data dir full wrapping ENOSPC", err)
	}
	g.check()
	var e *Error
	if err := g.refusal(); !errors.As(err, &e) || e.Code != kvpb.ErrorCode_ERROR_CODE_DISK_FULL {
		t.Fatalf("refusal while a write waits = %v, want DISK_FULL", err)
	}
	select {
	case err := <-done:
		t.Fatalf("the write returned %v while it still failed", err)
	case <-time.After(3 * diskCheckInterval):
	}
	close(room)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("retry = %v once the write succeeds", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the write still waits after it could succeed")
	}
	if attempts < 3 {
		t.Errorf("%d attempts, want several", attempts)
	}
	g.check()
	if err := g.stalled(); err != nil {
		t.Fatalf("stalled() = %v after the write succeeded", err)
	}
	if err := g.refusal(); err != nil {
		t.Fatalf("refusal = %v after the write succeeded (no reserve)", err)
	}
}
