//go:build linux

package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/internal/tmpfs"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// These tests let the disk really run out under Raft: the reserve is off
// (TestDiskReserve -1), so appends fail for lack of space instead of being
// refused before they are proposed.

// fullCluster starts three members whose data dirs are on tmpfs mounts of
// size bytes, and returns the mount points by index.
func fullCluster(t *testing.T, size int64) (*testcluster.Cluster, []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("fills three filesystems through Raft (~10s); skipped with -short")
	}
	var mounts []string
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		if err := tmpfs.Mount(dir, size); err != nil {
			if errors.Is(err, tmpfs.ErrNotPermitted) {
				t.Skipf("skipped: needs a tmpfs per member (%v)", err)
			}
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := tmpfs.Unmount(dir); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		mounts = append(mounts, dir)
	}
	// Registered after the unmounts: the members stop first.
	c := testcluster.StartWithConfig(t, 3, func(i int, cfg *node.Config) {
		cfg.InMemoryStore = false
		cfg.DataDir = filepath.Join(mounts[i], "data")
		cfg.WALSegmentBytes = 1 << 20
		cfg.TestDiskReserve = -1
		// Production timeouts: the term must not move for other reasons
		// than a full disk (testcluster's 50ms are tight under -race).
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLease = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
	})
	return c, mounts
}

func val(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("%06d", i)), 64<<10/6) }

// putVia writes key through member i (which forwards to the leader).
func putVia(c *testcluster.Cluster, i int, key string, v []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := kvpb.NewKVClient(c.Conn(i)).Put(ctx, &kvpb.PutRequest{Key: []byte(key), Value: v})
	return err
}

// maxTerm is the highest term any member is at.
func maxTerm(c *testcluster.Cluster) uint64 {
	var m uint64
	for i := 0; i < c.N(); i++ {
		m = max(m, c.Node(i).Raft().CurrentTerm())
	}
	return m
}

// checkAcked reads every acknowledged key on member i from its own state.
func checkAcked(t *testing.T, c *testcluster.Cluster, i int, acked map[string]int) {
	t.Helper()
	for k, v := range acked {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := kvpb.NewKVClient(c.Conn(i)).Get(ctx, &kvpb.GetRequest{Key: []byte(k), Consistency: kvpb.Consistency_CONSISTENCY_STALE})
		cancel()
		if err != nil || !bytes.Equal(resp.GetKv().GetValue(), val(v)) {
			t.Fatalf("stale Get(%q) on %s = %v", k, c.Name(i), err)
		}
	}
}

// waitApplied waits until member i has applied index.
func waitApplied(t *testing.T, c *testcluster.Cluster, i int, index uint64, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := c.Node(i).WaitApplied(ctx, index); err != nil {
		t.Fatalf("%s did not apply index %d within %v: %v", c.Name(i), index, within, err)
	}
}

// TestFullLeaderHandsOver: only the leader's disk fills. Its append fails,
// it steps down and stands for no election; a member with room leads and
// writes go on. Given room, the full member catches up by itself.
func TestFullLeaderHandsOver(t *testing.T) {
	c, mounts := fullCluster(t, 8<<20)
	full := c.MustLeader()
	for i := range mounts {
		if i != full {
			if err := tmpfs.Resize(mounts[i], 256<<20); err != nil {
				t.Fatal(err)
			}
		}
	}
	acked := map[string]int{}
	n := 0
	var failedAt, resumedAt time.Time
	// Write until the full member has failed and the others have taken
	// over for a while.
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); n++ {
		l := c.Leader()
		if l < 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		k := fmt.Sprintf("k%04d", n)
		err := putVia(c, l, k, val(n))
		if _, refused := c.Node(full).WriteHealth(); refused != nil && failedAt.IsZero() {
			failedAt = time.Now()
			t.Logf("put %d: %v; %s: %v", n, err, c.Name(full), refused)
		}
		if err != nil {
			continue
		}
		acked[k] = n
		if !failedAt.IsZero() && resumedAt.IsZero() {
			resumedAt = time.Now()
		}
		if !failedAt.IsZero() && l != full && time.Since(failedAt) > 2*time.Second {
			break
		}
	}
	if failedAt.IsZero() {
		t.Fatalf("%d puts of 64 KiB fit in 8 MiB", n)
	}
	l := c.Leader()
	if l < 0 || l == full {
		t.Fatalf("leader %d after %s's disk filled, want another member", l, c.Name(full))
	}
	t.Logf("%s leads; writes resumed %v after %s's first failed append; %d puts acknowledged",
		c.Name(l), resumedAt.Sub(failedAt).Round(time.Millisecond), c.Name(full), len(acked))

	// The full member does not campaign: the term holds.
	term := maxTerm(c)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		if err := putVia(c, l, "steady", val(0)); err != nil {
			t.Fatalf("put through %s while %s is full = %v", c.Name(l), c.Name(full), err)
		}
		if got := maxTerm(c); got != term {
			t.Fatalf("term moved from %d to %d while %s's disk is full", term, got, c.Name(full))
		}
		time.Sleep(100 * time.Millisecond)
	}
	acked["steady"] = 0
	if _, err := c.Node(full).WriteHealth(); err == nil {
		t.Fatalf("%s reports it takes writes with a full disk", c.Name(full))
	}

	if err := tmpfs.Resize(mounts[full], 256<<20); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, c, full, c.Node(l).Raft().CommitIndex(), 15*time.Second)
	checkAcked(t, c, full, acked)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Node(full).WriteHealth(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_, err := c.Node(full).WriteHealth()
			t.Fatalf("%s still refuses writes 5s after its disk grew: %v", c.Name(full), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAllFullNoElectionsThenRecover: every member's disk fills. The terms
// stop moving (no member that cannot append stands for election), reads of
// each member's own state work, and once the disks grow a leader is
// elected and writes resume with every acknowledged write in place.
func TestAllFullNoElectionsThenRecover(t *testing.T) {
	c, mounts := fullCluster(t, 8<<20)
	c.MustLeader()
	acked := map[string]int{}
	n := 0
	noLeaderSince := time.Time{}
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); n++ {
		l := c.Leader()
		if l < 0 {
			if noLeaderSince.IsZero() {
				noLeaderSince = time.Now()
			}
			if time.Since(noLeaderSince) > 2*time.Second {
				break
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		noLeaderSince = time.Time{}
		k := fmt.Sprintf("k%04d", n)
		if err := putVia(c, l, k, val(n)); err == nil {
			acked[k] = n
		}
	}
	if c.Leader() >= 0 {
		t.Fatalf("a leader after %d puts into three 8 MiB disks", n)
	}
	t.Logf("no leader after %d puts (%d acknowledged)", n, len(acked))

	term := maxTerm(c)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if got := maxTerm(c); got > term+1 {
			t.Fatalf("term climbed from %d to %d with every disk full", term, got)
		}
	}
	for i := 0; i < 3; i++ {
		var e *node.Error
		if _, err := c.Node(i).WriteHealth(); !errors.As(err, &e) || e.Code != kvpb.ErrorCode_ERROR_CODE_DISK_FULL {
			t.Errorf("%s WriteHealth = %v, want DISK_FULL", c.Name(i), err)
		}
	}
	// Each member still reads its own state.
	for i := 0; i < 3; i++ {
		checkAcked(t, c, i, map[string]int{"k0000": 0})
	}

	for _, m := range mounts {
		if err := tmpfs.Resize(m, 256<<20); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	for {
		if l := c.Leader(); l >= 0 && putVia(c, l, "after", val(1)) == nil {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("no write accepted 20s after the disks grew")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("writes resumed %v after the disks grew", time.Since(start).Round(time.Millisecond))
	acked["after"] = 1
	l := c.Leader()
	for i := 0; i < 3; i++ {
		waitApplied(t, c, i, c.Node(l).Raft().CommitIndex(), 15*time.Second)
		checkAcked(t, c, i, acked)
	}
}
