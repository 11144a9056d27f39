package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/proccluster"
)

// flipBytes inverts n bytes of the file at off.
func flipBytes(t *testing.T, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xff
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// middleOfData is the middle of the file's data (it may be preallocated
// with zeros past it).
func middleOfData(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(bytes.TrimRight(b, "\x00"))) / 2
}

// restartFails restarts nd and returns the end of its log once its process
// has exited; it fails the test if the process serves instead.
func restartFails(t *testing.T, nd *proccluster.Node) string {
	t.Helper()
	if err := nd.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := nd.WaitReady(ctx)
	var ne *proccluster.NodeError
	if !errors.As(err, &ne) || !errors.Is(err, proccluster.ErrExited) {
		t.Fatalf("restart on a corrupt data dir: WaitReady = %v, want the process to exit", err)
	}
	return ne.LogTail
}

// TestCorruptDataNamesItself: 16 bytes flipped in the middle of a WAL
// segment, or of the newest snapshot, make the member refuse to start
// with the file, where, and what to do, instead of "log not found" or a
// quiet start from an older snapshot.
func TestCorruptDataNamesItself(t *testing.T) {
	skipShort(t)
	for _, what := range []string{"wal segment", "snapshot"} {
		t.Run(what, func(t *testing.T) {
			cl := proccluster.Start(t, 1, proccluster.Options{ExtraArgs: []string{"--wal-segment-bytes", "1048576"}})
			nd := cl.Nodes[0]
			c := newClient(t, cl.Endpoints())
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			put := func(from, to int) {
				for i := from; i < to; i++ {
					if _, err := c.Put(ctx, []byte(fmt.Sprintf("k%04d", i)), value64k(i)); err != nil {
						t.Fatalf("Put %d: %v", i, err)
					}
				}
			}
			put(0, 60)
			if what == "snapshot" {
				// Two snapshots: with the newest damaged, raft alone would
				// start from the older one.
				if _, err := c.Snapshot(ctx, nd.ClientAddr); err != nil {
					t.Fatal(err)
				}
				put(60, 80)
				if _, err := c.Snapshot(ctx, nd.ClientAddr); err != nil {
					t.Fatal(err)
				}
			}
			if err := nd.Stop(); err != nil {
				t.Fatal(err)
			}

			var file string
			var want []string
			switch what {
			case "wal segment":
				segs, _ := filepath.Glob(filepath.Join(nd.DataDir, "wal", "*.wal"))
				sort.Strings(segs)
				if len(segs) < 3 {
					t.Fatalf("%d WAL segments, want at least 3", len(segs))
				}
				file = segs[1] // sealed: an older one
				want = []string{file + " is corrupt at offset ", " (entr"}
			case "snapshot":
				snaps, _ := filepath.Glob(filepath.Join(nd.DataDir, "snapshots", "*", "state.bin"))
				sort.Slice(snaps, func(i, j int) bool { return snapIndex(snaps[i]) > snapIndex(snaps[j]) })
				if len(snaps) != 2 {
					t.Fatalf("snapshots %v, want two", snaps)
				}
				file = snaps[0] // the newest
				want = []string{file + " is corrupt (snapshot at index ", "do not match the CRC-64 in meta.json"}
			}
			off := middleOfData(t, file)
			flipBytes(t, file, off, 16)
			tail := restartFails(t, nd)
			t.Logf("16 bytes flipped at offset %d of %s; the member said:\n%s", off, file, tail)
			want = append(want, "kvd: ", "wipe its data dir "+nd.DataDir, "kvctl cluster remove n1", "--join")
			for _, w := range want {
				if !strings.Contains(tail, w) {
					t.Errorf("the member's last words do not contain %q", w)
				}
			}
		})
	}
}

// snapIndex is the index in a snapshot directory's name (term-index-ms).
func snapIndex(stateBin string) int {
	var term, index, ms int
	fmt.Sscanf(filepath.Base(filepath.Dir(stateBin)), "%d-%d-%d", &term, &index, &ms)
	return index
}
