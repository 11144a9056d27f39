package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/types"
)

const testSegmentBytes = 64 << 10

func testGuard(dir string) *diskGuard {
	return newDiskGuard(dir, "n1", slog.New(slog.NewTextHandler(io.Discard, nil)), 0, 0, 0, -1,
		func() int64 { return 0 })
}

// testEntry is the payload of entry i: distinct, and long enough that a
// 64 KiB segment holds a few dozen.
func testEntry(i uint64) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("entry %06d;", i)), 100)
}

// writeTestWAL stores entries 1..n in batches of batch through the
// member's own store stack, then closes it.
func writeTestWAL(t *testing.T, dir string, n, batch uint64) {
	t.Helper()
	appendTestWAL(t, dir, 1, n, batch)
}

// appendTestWAL stores entries from..to in batches of batch, then closes
// the store.
func appendTestWAL(t *testing.T, dir string, from, n, batch uint64) {
	t.Helper()
	st, err := openStores(dir, LogStoreWAL, hclog.NewNullLogger(), noObserver{}, testGuard(dir), testSegmentBytes)
	if err != nil {
		t.Fatalf("openStores: %v", err)
	}
	for i := from; i <= n; i += batch {
		var logs []*raft.Log
		for j := i; j < i+batch && j <= n; j++ {
			logs = append(logs, &raft.Log{Index: j, Term: 1, Type: raft.LogCommand, Data: testEntry(j)})
		}
		if err := st.logs.StoreLogs(logs); err != nil {
			t.Fatalf("StoreLogs(%d..): %v", i, err)
		}
	}
	if err := st.close(); err != nil {
		t.Fatal(err)
	}
}

// tailWithData appends batches of 5 after entry n until the open tail holds
// at least four batches (rotation is asynchronous, so where a segment ends
// varies from run to run), and returns the last index.
func tailWithData(t *testing.T, dir string, n uint64) uint64 {
	t.Helper()
	for range 60 {
		files, _ := segments(t, dir)
		tail := files[len(files)-1]
		if r, err := scanSegment(tail, segmentInfo(t, tail), true); err == nil && len(r.entries) >= 20 {
			return n
		}
		appendTestWAL(t, dir, n+1, n+5, 5)
		n += 5
	}
	t.Fatal("the tail stays empty")
	return n
}

// checkTestWAL opens dir through the member's store stack and reads every
// entry back.
func checkTestWAL(t *testing.T, dir string, n uint64) {
	t.Helper()
	st, err := openStores(dir, LogStoreWAL, hclog.NewNullLogger(), noObserver{}, testGuard(dir), testSegmentBytes)
	if err != nil {
		t.Fatalf("openStores: %v", err)
	}
	defer st.close()
	last, err := st.logs.LastIndex()
	if err != nil || last != n {
		t.Fatalf("LastIndex = %d, %v; want %d", last, err, n)
	}
	for i := uint64(1); i <= n; i++ {
		var l raft.Log
		if err := st.logs.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d) = %v", i, err)
		}
		if !bytes.Equal(l.Data, testEntry(i)) {
			t.Fatalf("GetLog(%d).Data = %.20q..., want %.20q...", i, l.Data, testEntry(i))
		}
	}
}

// segments lists the WAL's segment files, oldest first, and which of them
// are sealed.
func segments(t *testing.T, dir string) (files []string, sealed map[string]bool) {
	t.Helper()
	var db metadb.BoltMetaDB
	st, err := db.Load(filepath.Join(dir, walDirName))
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	sealed = map[string]bool{}
	for _, si := range st.Segments {
		name := filepath.Join(dir, walDirName, fmt.Sprintf("%020d-%016x.wal", si.BaseIndex, si.ID))
		files = append(files, name)
		sealed[name] = !si.SealTime.IsZero()
	}
	sort.Strings(files)
	return files, sealed
}

// segmentInfo is the segment list's entry for the segment file at path.
func segmentInfo(t *testing.T, path string) types.SegmentInfo {
	t.Helper()
	var db metadb.BoltMetaDB
	st, err := db.Load(filepath.Dir(path))
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, si := range st.Segments {
		if fmt.Sprintf("%020d-%016x.wal", si.BaseIndex, si.ID) == filepath.Base(path) {
			return si
		}
	}
	t.Fatalf("%s is not in the segment list", path)
	return types.SegmentInfo{}
}

// dataEnd is the offset just past the last non-zero byte of the file.
func dataEnd(t *testing.T, path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(bytes.TrimRight(b, "\x00")))
}

// flip inverts n bytes of the file at off.
func flip(t *testing.T, path string, off int64, n int) {
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

func TestWALCorruptionNamesFileOffsetAndEntries(t *testing.T) {
	tests := []struct {
		name string
		// where picks the damaged file and offset among the segments.
		where func(t *testing.T, files []string, sealed map[string]bool) (string, int64)
	}{
		{"middle of a sealed segment", func(t *testing.T, files []string, sealed map[string]bool) (string, int64) {
			if !sealed[files[1]] {
				t.Fatalf("segment %s is not sealed", files[1])
			}
			return files[1], dataEnd(t, files[1]) / 2
		}},
		{"the end of a sealed segment (its index)", func(t *testing.T, files []string, sealed map[string]bool) (string, int64) {
			return files[0], dataEnd(t, files[0]) - 64
		}},
		{"a frame header in the open tail", func(t *testing.T, files []string, sealed map[string]bool) (string, int64) {
			tail := files[len(files)-1]
			r, err := scanSegment(tail, segmentInfo(t, tail), true)
			if err != nil || len(r.entries) < 5 {
				t.Fatalf("scanSegment(%s) = %d entries, %v", tail, len(r.entries), err)
			}
			return tail, int64(r.entries[len(r.entries)/2])
		}},
		{"middle of the open tail", func(t *testing.T, files []string, sealed map[string]bool) (string, int64) {
			tail := files[len(files)-1]
			if sealed[tail] {
				t.Fatalf("tail %s is sealed", tail)
			}
			return tail, dataEnd(t, tail) / 2
		}},
		{"the tail's file header", func(t *testing.T, files []string, sealed map[string]bool) (string, int64) {
			return files[len(files)-1], 8
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTestWAL(t, dir, 500, 5)
			tailWithData(t, dir, 500)
			files, sealed := segments(t, dir)
			if len(files) < 3 {
				t.Fatalf("%d segments, want at least 3", len(files))
			}
			file, off := tt.where(t, files, sealed)
			flip(t, file, off, 16)

			_, err := openStores(dir, LogStoreWAL, hclog.NewNullLogger(), noObserver{}, testGuard(dir), testSegmentBytes)
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("openStores after flipping 16 bytes of %s at %d = %v, want a *CorruptError", file, off, err)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("errors.Is(%v, ErrCorrupt) = false", err)
			}
			if ce.File != file {
				t.Errorf("CorruptError.File = %s, want %s", ce.File, file)
			}
			// The damage is reported where it is, or at the end of the
			// batch whose checksum it broke (at most one batch further).
			if ce.Offset < 0 || ce.Offset > off+16+5*int64(len(testEntry(1))+16)+8 {
				t.Errorf("CorruptError.Offset = %d, damage at %d-%d", ce.Offset, off, off+16)
			}
			t.Logf("%v", err)
		})
	}
}

func TestWALTornLastWriteIsNotCorruption(t *testing.T) {
	dir := t.TempDir()
	n := uint64(500)
	writeTestWAL(t, dir, n, 5)
	n = tailWithData(t, dir, n)
	files, _ := segments(t, dir)
	tail := files[len(files)-1]
	// A crash during the last append: its last bytes never reached the disk.
	end := dataEnd(t, tail)
	f, err := os.OpenFile(tail, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 100), end-100); err != nil {
		t.Fatal(err)
	}
	f.Close()

	st, err := openStores(dir, LogStoreWAL, hclog.NewNullLogger(), noObserver{}, testGuard(dir), testSegmentBytes)
	if err != nil {
		t.Fatalf("openStores after a torn last write = %v, want it to open", err)
	}
	last, _ := st.logs.LastIndex()
	st.close()
	// raft-wal drops the torn batch (its last 5 entries), nothing before it.
	if last != n-5 {
		t.Fatalf("LastIndex after a torn last batch = %d, want %d", last, n-5)
	}
}

func TestWALUntouchedPassesTheCheck(t *testing.T) {
	dir := t.TempDir()
	writeTestWAL(t, dir, 500, 5)
	checkTestWAL(t, dir, 500)
}

// failingMeta is raft-wal's bolt metadata store whose commits fail while
// fail is set: what a full disk does to it.
type failingMeta struct {
	metadb.BoltMetaDB
	fail bool
}

func (m *failingMeta) CommitState(st types.PersistentState) error {
	if m.fail {
		return fmt.Errorf("commit: %w", os.NewSyscallError("pwrite", syscall.ENOSPC))
	}
	return m.BoltMetaDB.CommitState(st)
}

func TestSealedTailWithoutRotationIsRecorded(t *testing.T) {
	dir := t.TempDir()
	wdir := filepath.Join(dir, walDirName)
	if err := os.MkdirAll(wdir, 0o700); err != nil {
		t.Fatal(err)
	}
	// raft-wal alone: the segment list cannot be committed when the tail
	// fills, so its rotation fails after the tail was sealed on disk.
	meta := &failingMeta{}
	w, err := wal.Open(wdir, wal.WithSegmentSize(testSegmentBytes), wal.WithMetaStore(meta), wal.WithLogger(hclog.NewNullLogger()))
	if err != nil {
		t.Fatal(err)
	}
	meta.fail = true
	var stored uint64
	for i := uint64(1); i <= 200; i++ {
		if err := w.StoreLogs([]*raft.Log{{Index: i, Term: 1, Type: raft.LogCommand, Data: testEntry(i)}}); err != nil {
			if !errors.Is(err, wal.ErrSealed) {
				t.Fatalf("StoreLogs(%d) = %v, want raft-wal's %v", i, err, wal.ErrSealed)
			}
			break
		}
		stored = i
	}
	if stored == 200 {
		t.Fatal("the tail never filled")
	}
	w.Close()

	// Reopened by raft-wal alone, the log stays stuck: every append fails.
	w, err = wal.Open(wdir, wal.WithSegmentSize(testSegmentBytes), wal.WithLogger(hclog.NewNullLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.StoreLogs([]*raft.Log{{Index: stored + 1, Term: 1, Type: raft.LogCommand, Data: testEntry(stored + 1)}}); !errors.Is(err, wal.ErrSealed) {
		t.Fatalf("raft-wal reopened: StoreLogs = %v, want %v (if this changed, raft-wal fixed it)", err, wal.ErrSealed)
	}
	w.Close()

	// The member's store stack records the rotation and appends again.
	st, err := openStores(dir, LogStoreWAL, hclog.NewNullLogger(), noObserver{}, testGuard(dir), testSegmentBytes)
	if err != nil {
		t.Fatalf("openStores: %v", err)
	}
	for i := stored + 1; i <= stored+100; i++ {
		if err := st.logs.StoreLogs([]*raft.Log{{Index: i, Term: 1, Type: raft.LogCommand, Data: testEntry(i)}}); err != nil {
			t.Fatalf("StoreLogs(%d) after recording the rotation = %v", i, err)
		}
	}
	st.close()
	checkTestWAL(t, dir, stored+100)
}

func TestCorruptAdviceNamesMember(t *testing.T) {
	err := &CorruptError{File: "/d/wal/x.wal", Offset: 12, Index: "entries 3-4", What: "bad", Advice: corruptAdvice("/d", "n2")}
	for _, want := range []string{"/d/wal/x.wal is corrupt at offset 12 (entries 3-4): bad", "kvctl cluster remove n2", "wipe its data dir /d", "--join"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not contain %q", err.Error(), want)
		}
	}
}

// noObserver discards what the stores measure.
type noObserver struct{}

func (noObserver) Observe(float64) {}

// BenchmarkCheckWAL measures the start-up check of a WAL of 64 MiB
// segments holding 64 MiB of 4 KiB entries (b.SetBytes: MB/s is the rate
// the check reads the log at).
func BenchmarkCheckWAL(b *testing.B) {
	dir := b.TempDir()
	st, err := openStores(dir, LogStoreWAL, hclog.NewNullLogger(), noObserver{}, testGuard(dir), DefaultWALSegmentBytes)
	if err != nil {
		b.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 4<<10)
	const n = 16 << 10 // 64 MiB
	for i := uint64(1); i <= n; i += 64 {
		var logs []*raft.Log
		for j := i; j < i+64; j++ {
			logs = append(logs, &raft.Log{Index: j, Term: 1, Type: raft.LogCommand, Data: data})
		}
		if err := st.logs.StoreLogs(logs); err != nil {
			b.Fatal(err)
		}
	}
	st.close()
	b.SetBytes(n * int64(len(data)))
	b.ResetTimer()
	for range b.N {
		if _, err := checkWAL(filepath.Join(dir, walDirName)); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSealedTailAfterCloseIsRecorded: raft-wal rotates a sealed segment in
// the background; closed before it did (a shutdown right after the append
// that filled the segment), it reopens with a tail that refuses every
// append. The member's store stack records the rotation and appends on.
func TestSealedTailAfterCloseIsRecorded(t *testing.T) {
	dir := t.TempDir()
	wdir := filepath.Join(dir, walDirName)
	if err := os.MkdirAll(wdir, 0o700); err != nil {
		t.Fatal(err)
	}
	var stuck uint64
	for i := uint64(1); i <= 300 && stuck == 0; i++ {
		w, err := wal.Open(wdir, wal.WithSegmentSize(testSegmentBytes), wal.WithLogger(hclog.NewNullLogger()))
		if err != nil {
			t.Fatal(err)
		}
		err = w.StoreLogs([]*raft.Log{{Index: i, Term: 1, Type: raft.LogCommand, Data: testEntry(i)}})
		w.Close()
		switch {
		case errors.Is(err, wal.ErrSealed):
			stuck = i
		case err != nil:
			t.Fatalf("StoreLogs(%d) = %v", i, err)
		}
	}
	if stuck == 0 {
		t.Skip("raft-wal rotated before every Close in 300 tries: nothing to record (fixed upstream?)")
	}
	t.Logf("raft-wal alone refused entry %d after a reopen: segment is sealed", stuck)
	appendTestWAL(t, dir, stuck, stuck+20, 1)
	checkTestWAL(t, dir, stuck+20)
}

func TestUnfinishedSnapshotsAreRemoved(t *testing.T) {
	dir := t.TempDir()
	snaps := filepath.Join(dir, "snapshots")
	tmp := filepath.Join(snaps, "3-120-1795964497295.tmp")
	done := filepath.Join(snaps, "3-100-1795964490000")
	for _, d := range []string{tmp, done} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "state.bin"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeUnfinishedSnapshots(dir, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("unfinished snapshot %s: stat = %v, want it removed", tmp, err)
	}
	if _, err := os.Stat(filepath.Join(done, "state.bin")); err != nil {
		t.Errorf("finished snapshot touched: %v", err)
	}
	// No snapshots directory yet (a new member): nothing to do.
	if err := removeUnfinishedSnapshots(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Errorf("no snapshots dir: %v", err)
	}
}
