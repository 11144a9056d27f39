package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/internal/backupfile"
	"github.com/kvdproject/kvd/internal/proccluster"
)

// TestBackupAndRestore saves a snapshot from a cluster under writes,
// restores it into a new three-node cluster, and checks that the new
// cluster holds exactly the acknowledged writes up to the snapshot's index,
// that the restored state hashes to what the source streamed for that
// index, and that torn or altered files are refused.
func TestBackupAndRestore(t *testing.T) {
	skipShort(t)
	src := proccluster.Start(t, 3, proccluster.Options{})
	kvd, kvctl := proccluster.Binaries(t)
	c := newClient(t, src.Endpoints())

	type write struct {
		key, value string
		index      uint64
	}
	var mu sync.Mutex
	var acked []write
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			k, v := fmt.Sprintf("bk/%05d", i), fmt.Sprintf("v%d", i)
			r, err := c.Put(ctx, []byte(k), []byte(v))
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, write{k, v, r.GetHeader().GetAppliedIndex()}) // see below
				mu.Unlock()
			}
		}
	}()
	time.Sleep(time.Second)

	file := filepath.Join(t.TempDir(), "backup.kvd")
	out, err := exec.Command(kvctl, "--endpoints", strings.Join(src.Endpoints(), ","), "snapshot", "save", file).CombinedOutput()
	if err != nil {
		t.Fatalf("kvctl snapshot save: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	time.Sleep(500 * time.Millisecond) // writes after the snapshot must not appear in the restore
	close(stop)
	<-done

	// The index a write applied at is its key's mod index (each key is
	// written once). The header of a put answered from the exactly-once
	// table after a retry carries the retry's later index instead.
	rctx, rcancel := context.WithTimeout(t.Context(), time.Minute)
	for i, w := range acked {
		r, err := c.Get(rctx, []byte(w.key))
		if err != nil {
			t.Fatalf("Get(%s) on the source: %v", w.key, err)
		}
		acked[i].index = r.GetKv().GetModIndex()
	}
	rcancel()

	bf, err := backupfile.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	index, sum := bf.Info.GetIndex(), bf.SHA256
	f := fsm.New()
	if err := f.Restore(io.NopCloser(bf.Data())); err != nil {
		t.Fatal(err)
	}
	bf.Close()
	if got := f.StateHash(); !bytes.Equal(got, sum) {
		t.Fatalf("the saved state hashes to %x; the source streamed %x for index %d", got, sum, index)
	}

	// A torn and an altered copy are refused by kvd restore, with the reason.
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	flipped := bytes.Clone(raw)
	flipped[len(flipped)/2] ^= 0x40
	for name, data := range map[string][]byte{"torn": raw[:len(raw)-100], "altered": flipped} {
		p := filepath.Join(dir, name+".kvd")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(kvd, "restore", "--from", p, "--name", "n1", "--data-dir", filepath.Join(dir, name),
			"--initial-cluster", "n1=127.0.0.1:1").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "torn or altered") {
			t.Errorf("kvd restore of a %s file: %v\n%s\nwant a refusal that says the file is torn or altered", name, err, out)
		}
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("kvd restore of a %s file created the data dir", name)
		}
	}

	// Restore into a new cluster.
	ports := proccluster.FreePorts(t, 6)
	var initial []string
	for i := range 3 {
		initial = append(initial, fmt.Sprintf("n%d=127.0.0.1:%d", i+1, ports[2*i+1]))
	}
	dst := proccluster.NewCluster(kvd, t.TempDir(), t.Logf)
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		data := filepath.Join(dst.Dir, name)
		out, err := exec.Command(kvd, "restore", "--from", file, "--name", name, "--data-dir", data,
			"--initial-cluster", strings.Join(initial, ",")).CombinedOutput()
		if err != nil {
			t.Fatalf("kvd restore %s: %v\n%s", name, err, out)
		}
		if !strings.Contains(string(out), fmt.Sprintf("state hash %x", sum)) || !strings.Contains(string(out), "member addresses dropped") {
			t.Errorf("kvd restore says %q; want the state hash %x", out, sum)
		}
		client, peer := fmt.Sprintf("127.0.0.1:%d", ports[2*i]), fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])
		dst.AddNode(name, client, peer, data, []string{"--name", name, "--data-dir", data, "--client-addr", client,
			"--peer-addr", peer, "--initial-cluster", strings.Join(initial, ",")})
	}
	t.Cleanup(func() {
		for _, nd := range dst.Nodes {
			nd.Kill()
		}
	})
	for _, nd := range dst.Nodes {
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := dst.WaitLeader(ctx); err != nil {
		dst.DumpLogs()
		t.Fatal(err)
	}
	// No member of the new cluster names an address of the old one: clients
	// must not be sent there.
	dc := newClient(t, dst.Endpoints())
	waitFor(t, 20*time.Second, "every restored member has registered its own client address", func() bool {
		ms, err := dc.Members(ctx)
		if err != nil || len(ms.GetMembers()) != 3 {
			return false
		}
		for i, m := range ms.GetMembers() {
			if m.GetClientAddr() != dst.Nodes[i].ClientAddr {
				return false
			}
		}
		return true
	})
	for _, m := range src.Endpoints() {
		if st, err := dc.Status(ctx, ""); err == nil && st.GetLeaderAddr() == m {
			t.Fatalf("the restored cluster names the source's %s as its leader", m)
		}
	}
	var before, after int
	for _, w := range acked {
		r, err := dc.Get(ctx, []byte(w.key))
		switch {
		case w.index <= index:
			before++
			if err != nil || string(r.GetKv().GetValue()) != w.value {
				t.Errorf("Get(%s) on the restored cluster = %v, %v; want %q (written at %d, snapshot at %d)", w.key, r.GetKv(), err, w.value, w.index, index)
			}
		default:
			after++
			if err == nil {
				t.Errorf("Get(%s) on the restored cluster = %q; it was written at %d, after the snapshot at %d", w.key, r.GetKv().GetValue(), w.index, index)
			}
		}
	}
	t.Logf("snapshot at index %d: %d acknowledged writes before it, %d after", index, before, after)
	if before == 0 || after == 0 {
		t.Fatalf("%d writes before the snapshot and %d after; want some of each", before, after)
	}
	if _, err := dc.Put(ctx, []byte("after-restore"), []byte("ok")); err != nil {
		t.Fatalf("Put on the restored cluster: %v", err)
	}
}
