//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/proccluster"
	"github.com/kvdproject/kvd/internal/tmpfs"
)

// smallDataDirs mounts a tmpfs of size bytes for each of n nodes and
// returns their data dirs by node name. The mounts are undone after the
// cluster's processes are gone (cleanups run last first). Skips the test
// where mounting is refused.
func smallDataDirs(t *testing.T, n int, size int64) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for i := 1; i <= n; i++ {
		mnt := t.TempDir()
		if err := tmpfs.Mount(mnt, size); err != nil {
			if errors.Is(err, tmpfs.ErrNotPermitted) {
				t.Skipf("skipped: needs to mount a small tmpfs per node (%v)", err)
			}
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := tmpfs.Unmount(mnt); err != nil {
				t.Errorf("unmount %s: %v", mnt, err)
			}
		})
		dirs[fmt.Sprintf("n%d", i)] = filepath.Join(mnt, "data")
	}
	return dirs
}

// writeHealth asks node nd's gRPC health service about "kvd.writes" (or
// "" for the member as a whole).
func writeHealth(ctx context.Context, nd *proccluster.Node, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	conn, err := grpc.NewClient(nd.ClientAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return 0, err
	}
	return resp.Status, nil
}

func value64k(i int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("%05d", i)), 64<<10/5)
}

// TestDiskFullRefusesWritesAndRecovers: three members, each with its data
// dir on a 16 MiB filesystem of its own, filled with 64 KiB puts (the
// issue's reproduction, smaller). Writes that add data are refused with
// DISK_FULL naming a data dir, before they reach the log; health reports
// kvd.writes NOT_SERVING; no elections; reads and deletes still work.
// Growing the filesystems (remount) lets writes resume within seconds, with
// every acknowledged write there and no refused one.
func TestDiskFullRefusesWritesAndRecovers(t *testing.T) {
	skipShort(t)
	dirs := smallDataDirs(t, 3, 16<<20)
	cl := proccluster.Start(t, 3, proccluster.Options{
		ExtraArgs: []string{"--wal-segment-bytes", "1048576"},
		DataDir:   func(name string) string { return dirs[name] },
	})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	acked := map[string]int{}
	var refusal error
	for i := 0; i < 2000 && refusal == nil; i++ {
		k := fmt.Sprintf("fill/%04d", i)
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Put(wctx, []byte(k), value64k(i))
		wcancel()
		switch {
		case err == nil:
			acked[k] = i
		case errors.Is(err, client.ErrDiskFull):
			refusal = err
		default:
			t.Fatalf("Put(%q) = %v, want success or %v", k, err, client.ErrDiskFull)
		}
	}
	if refusal == nil {
		t.Fatalf("%d puts of 64 KiB fit in 16 MiB data dirs", len(acked))
	}
	t.Logf("%d puts acknowledged, then: %v", len(acked), refusal)
	named := false
	for _, d := range dirs {
		named = named || strings.Contains(refusal.Error(), "data dir full: "+d)
	}
	if !named {
		t.Fatalf("refusal %q names none of the data dirs %v", refusal, dirs)
	}

	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st0, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Refused before the log: these keys must never appear.
	var refused []string
	for i := 0; i < 5; i++ {
		k := fmt.Sprintf("refused/%d", i)
		if _, err := c.Put(ctx, []byte(k), value64k(i)); !errors.Is(err, client.ErrDiskFull) {
			t.Fatalf("Put(%q) while full = %v, want %v", k, err, client.ErrDiskFull)
		}
		refused = append(refused, k)
	}

	// Health: the leader refuses writes, and still answers.
	for _, svc := range []struct {
		name string
		want healthpb.HealthCheckResponse_ServingStatus
	}{{"kvd.writes", healthpb.HealthCheckResponse_NOT_SERVING}, {"", healthpb.HealthCheckResponse_SERVING}} {
		got, err := writeHealth(ctx, leader, svc.name)
		if err != nil || got != svc.want {
			t.Fatalf("health %q on leader %s = %v, %v; want %v", svc.name, leader.Name, got, err, svc.want)
		}
	}

	// No elections while full: every member keeps the leader's term.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, nd := range cl.Nodes {
			st, err := nd.Status(ctx)
			if err != nil {
				t.Fatalf("Status(%s) = %v", nd.Name, err)
			}
			if st.Term > st0.Term+1 {
				t.Fatalf("%s is at term %d, the leader was at %d when writes were refused: elections spin", nd.Name, st.Term, st0.Term)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Reads work, linearizable; so does a delete.
	for _, k := range []string{"fill/0000", fmt.Sprintf("fill/%04d", len(acked)-1)} {
		resp, err := c.Get(ctx, []byte(k))
		if err != nil || !bytes.Equal(resp.Kv.Value, value64k(acked[k])) {
			t.Fatalf("linearizable Get(%q) while full = %v", k, err)
		}
	}
	if _, err := c.Delete(ctx, []byte("fill/0001")); err != nil {
		t.Fatalf("Delete while full = %v, want it accepted", err)
	}
	delete(acked, "fill/0001")

	// Give the space back.
	for _, d := range dirs {
		if err := tmpfs.Resize(filepath.Dir(d), 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	for {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Put(wctx, []byte("after"), []byte("space came back"))
		wcancel()
		if err == nil {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("writes still fail 20s after the space came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("first write accepted %v after the filesystems grew", time.Since(start).Round(time.Millisecond))
	for _, nd := range cl.Nodes {
		for {
			got, err := writeHealth(ctx, nd, "kvd.writes")
			if err == nil && got == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("health kvd.writes on %s = %v, %v 20s after the space came back", nd.Name, got, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i := 0; i < 20; i++ {
		k := fmt.Sprintf("more/%02d", i)
		if _, err := c.Put(ctx, []byte(k), value64k(i)); err != nil {
			t.Fatalf("Put(%q) after recovery = %v", k, err)
		}
		acked[k] = i
	}

	// Every acknowledged write is there, on every member; no refused one is.
	st, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitApplied(ctx, st.CommitIndex); err != nil {
		t.Fatal(err)
	}
	for _, nd := range cl.Nodes {
		only := newClient(t, []string{nd.ClientAddr})
		for k, i := range acked {
			resp, err := only.Get(ctx, []byte(k), client.WithStale())
			if err != nil || !bytes.Equal(resp.Kv.Value, value64k(i)) {
				t.Fatalf("stale Get(%q) on %s = %v after recovery", k, nd.Name, err)
			}
		}
		for _, k := range append(refused, "fill/0001") {
			if _, err := only.Get(ctx, []byte(k), client.WithStale()); !errors.Is(err, client.ErrNotFound) {
				t.Fatalf("stale Get(%q) on %s = %v, want not found (refused or deleted)", k, nd.Name, err)
			}
		}
	}
}

// TestQuotaRefusesWritesUntilSpaceIsFreed: with --quota-bytes, writes that
// add data are refused with QUOTA_EXCEEDED once a data dir reaches it;
// deletes are accepted; deleting the data and taking a snapshot on every
// member frees the log, and writes are accepted again.
func TestQuotaRefusesWritesUntilSpaceIsFreed(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{
		ExtraArgs: []string{"--wal-segment-bytes", "1048576", "--quota-bytes", "8388608", "--trailing-logs", "10"},
	})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var keys []string
	var refusal error
	for i := 0; i < 1000 && refusal == nil; i++ {
		k := fmt.Sprintf("q/%04d", i)
		_, err := c.Put(ctx, []byte(k), value64k(i))
		switch {
		case err == nil:
			keys = append(keys, k)
		case errors.Is(err, client.ErrQuotaExceeded):
			refusal = err
		default:
			t.Fatalf("Put(%q) = %v, want success or %v", k, err, client.ErrQuotaExceeded)
		}
	}
	if refusal == nil {
		t.Fatalf("%d puts of 64 KiB fit under an 8 MiB quota", len(keys))
	}
	if !strings.Contains(refusal.Error(), "--quota-bytes is 8.0 MiB") {
		t.Fatalf("refusal %q does not name the quota", refusal)
	}
	t.Logf("%d puts acknowledged, then: %v", len(keys), refusal)
	for _, k := range keys {
		if _, err := c.Delete(ctx, []byte(k)); err != nil {
			t.Fatalf("Delete(%q) over quota = %v, want it accepted", k, err)
		}
	}
	start := time.Now()
	for {
		for _, nd := range cl.Nodes {
			if _, err := c.Snapshot(ctx, nd.ClientAddr); err != nil {
				t.Fatalf("Snapshot on %s = %v", nd.Name, err)
			}
		}
		_, err := c.Put(ctx, []byte("after"), []byte("freed"))
		if err == nil {
			break
		}
		if !errors.Is(err, client.ErrQuotaExceeded) || time.Since(start) > 30*time.Second {
			t.Fatalf("Put after deleting everything and snapshotting = %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("writes accepted again %v after the deletes", time.Since(start).Round(time.Millisecond))
	for _, nd := range cl.Nodes {
		var used int64
		filepath.Walk(nd.DataDir, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				used += fi.Size()
			}
			return nil
		})
		t.Logf("%s data dir: %d bytes of files", nd.Name, used)
	}
}
