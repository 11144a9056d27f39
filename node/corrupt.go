package node

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// Corruption names itself (docs/design.md "Corruption"). Before raft
// opens the data dir, every WAL segment is read through and each batch of
// entries checked against the CRC raft-wal wrote with it; after raft has
// restored, the newest snapshot must be the one it restored. A member whose
// data fails these checks refuses to start and says which file, where, and
// what to do, instead of failing later with "log not found" or quietly
// starting from an older snapshot.

// ErrCorrupt is matched (errors.Is) by every *CorruptError.
var ErrCorrupt = errors.New("node: data dir is corrupt")

// CorruptError is a file of the data dir that fails its checks.
type CorruptError struct {
	File   string // the file's path
	Offset int64  // byte offset of the damage, -1 when not known
	Index  string // the Raft entries affected ("entries 120-187"), or ""
	What   string // what is wrong
	// Advice is what to do, filled in by Start (it knows the member).
	Advice string
}

func (e *CorruptError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s is corrupt", e.File)
	if e.Offset >= 0 {
		fmt.Fprintf(&b, " at offset %d", e.Offset)
	}
	if e.Index != "" {
		fmt.Fprintf(&b, " (%s)", e.Index)
	}
	fmt.Fprintf(&b, ": %s", e.What)
	if e.Advice != "" {
		fmt.Fprintf(&b, ". %s", e.Advice)
	}
	return b.String()
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// corruptAdvice is what to do about a corrupt data dir of member name.
func corruptAdvice(dataDir, name string) string {
	return fmt.Sprintf("This member's copy of the data cannot be trusted, but the other members still hold it: "+
		"keep this member stopped, remove it from the cluster (kvctl cluster remove %s), wipe its data dir %s, "+
		"and add it back empty (kvctl cluster add %s PEER-ADDR, then start it with --join); "+
		"in a single-member cluster, restore from a backup instead (kvd restore)", name, dataDir, name)
}

// raft-wal's segment format (github.com/hashicorp/raft-wal, segment/format.go):
// a 32-byte file header (magic, version, base index, segment ID, codec), then
// 8-byte aligned frames, each an 8-byte header (type, 3 zero bytes, length
// or CRC) and a padded payload. Entries are written in batches closed by a
// commit frame holding the CRC-32C of every byte since the previous commit
// frame (the file header counts for the first). Sealing adds an index frame
// (the file offset of every entry) to the last batch.
const (
	walFileHeaderLen  = 32
	walMagic          = 0x58eb6b0d
	walFrameHeaderLen = 8
	walFrameEntry     = 1
	walFrameIndex     = 2
	walFrameCommit    = 3
	walMaxEntrySize   = segment.MaxEntrySize
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func walPad(n uint32) int64 {
	return int64((walFrameHeaderLen - n%walFrameHeaderLen) % walFrameHeaderLen)
}

// walSummary is what checkWAL learned of the log.
type walSummary struct {
	state types.PersistentState
	// tailSealed: the last segment's file ends with a committed index frame
	// although the segment list says it is open: a rotation that never
	// recorded the next segment. raft-wal would refuse every append.
	tailSealed     bool
	tailIndexStart uint64 // offset of the index array
	tailLastIndex  uint64
}

// checkWAL reads every segment of the WAL in dir and returns a
// *CorruptError for the first one that fails.
func checkWAL(dir string) (walSummary, error) {
	var sum walSummary
	metaPath := filepath.Join(dir, metadb.FileName)
	if _, err := os.Stat(metaPath); errors.Is(err, fs.ErrNotExist) {
		return sum, nil
	}
	var db metadb.BoltMetaDB
	st, err := db.Load(dir)
	db.Close()
	if err != nil {
		if errors.Is(err, types.ErrCorrupt) {
			return sum, &CorruptError{File: metaPath, Offset: -1, What: "the log's segment list cannot be read: " + err.Error()}
		}
		return sum, fmt.Errorf("read raft log metadata %s: %w", metaPath, err)
	}
	sum.state = st
	for i, si := range st.Segments {
		path := filepath.Join(dir, segment.FileName(si))
		tail := i == len(st.Segments)-1 && si.SealTime.IsZero()
		if !tail && si.SealTime.IsZero() {
			return sum, &CorruptError{File: metaPath, Offset: -1,
				What: fmt.Sprintf("segment %s is open but is not the last one", segment.FileName(si))}
		}
		r, err := scanSegment(path, si, tail)
		if err != nil {
			return sum, err
		}
		if tail && r.indexCommitted {
			sum.tailSealed = true
			sum.tailIndexStart = uint64(r.indexOff) + walFrameHeaderLen
			sum.tailLastIndex = si.BaseIndex + uint64(r.committed) - 1
		}
	}
	return sum, nil
}

// segScan is what scanSegment found in a segment file.
type segScan struct {
	entries        []uint32 // offsets of the entry frames, from BaseIndex on
	committed      int      // how many of them are in batches whose CRC matched
	indexOff       int64    // offset of the index frame's header, -1: none
	index          []byte   // its payload
	indexCommitted bool     // the index frame is in a batch whose CRC matched
	end            int64    // where the data of the last good batch ends
	damage         *CorruptError
}

// scanSegment reads the segment file at path through. A sealed segment
// must be whole: every batch's CRC, every entry the segment list says it
// holds, and its index. The open tail may end in a torn batch (a write cut
// short by a crash, which raft-wal drops when it opens the log), but damage
// followed by an intact batch is corruption: raft-wal would silently drop
// that batch and every one after it.
func scanSegment(path string, info types.SegmentInfo, tail bool) (*segScan, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && tail {
			return &segScan{indexOff: -1}, nil // raft-wal creates a missing tail
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &CorruptError{File: path, Offset: -1, What: "the log segment is missing"}
		}
		return nil, fmt.Errorf("raft log segment %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("raft log segment %s: %w", path, err)
	}
	size := fi.Size()
	r := &segScan{indexOff: -1}
	first := func() uint64 { return info.BaseIndex + uint64(r.committed) }
	batchIndexes := func() string {
		lo, hi := first(), info.BaseIndex+uint64(len(r.entries))
		switch {
		case hi <= lo:
			return fmt.Sprintf("entries from %d on", lo)
		case hi == lo+1:
			return fmt.Sprintf("entry %d", lo)
		}
		return fmt.Sprintf("entries %d-%d", lo, hi-1)
	}
	corrupt := func(off int64, index, format string, args ...any) *CorruptError {
		return &CorruptError{File: path, Offset: off, Index: index, What: fmt.Sprintf(format, args...)}
	}

	br := bufio.NewReaderSize(f, 1<<20)
	var hdr [walFileHeaderLen]byte
	n, err := io.ReadFull(br, hdr[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("raft log segment %s: %w", path, err)
	}
	headerErr := ""
	switch {
	case n < walFileHeaderLen:
		headerErr = "the file header is cut short"
	case binary.LittleEndian.Uint32(hdr[0:4]) != walMagic || hdr[4] != 0 || hdr[5] != 0 || hdr[6] != 0 || hdr[7] != 0:
		headerErr = "the file header is not a raft-wal segment header"
	case binary.LittleEndian.Uint64(hdr[8:16]) != info.BaseIndex || binary.LittleEndian.Uint64(hdr[16:24]) != info.ID ||
		binary.LittleEndian.Uint64(hdr[24:32]) != info.Codec:
		headerErr = fmt.Sprintf("the file header (base index %d, id %d) does not match the segment list (base index %d, id %d)",
			binary.LittleEndian.Uint64(hdr[8:16]), binary.LittleEndian.Uint64(hdr[16:24]), info.BaseIndex, info.ID)
	}
	if headerErr != "" && !tail {
		return nil, corrupt(0, "", "%s", headerErr)
	}

	crc := crc32.Update(0, castagnoli, hdr[:n])
	off := int64(n)
	var fh [walFrameHeaderLen]byte
	payload := make([]byte, 64<<10)
	for off+walFrameHeaderLen <= size && r.damage == nil {
		if _, err := io.ReadFull(br, fh[:]); err != nil {
			return nil, fmt.Errorf("raft log segment %s at offset %d: %w", path, off, err)
		}
		if fh == [walFrameHeaderLen]byte{} {
			break // the end of what was written
		}
		typ, length := fh[0], binary.LittleEndian.Uint32(fh[4:8])
		if fh[1] != 0 || fh[2] != 0 || fh[3] != 0 || typ < walFrameEntry || typ > walFrameCommit {
			r.damage = corrupt(off, batchIndexes(), "a frame header is garbage (% x)", fh[:])
			break
		}
		if typ == walFrameCommit {
			if length != crc {
				r.damage = corrupt(off, batchIndexes(), "the checksum of a batch of entries does not match (stored %08x, computed %08x)", length, crc)
				break
			}
			r.committed = len(r.entries)
			r.indexCommitted = r.indexOff >= 0
			off += walFrameHeaderLen
			r.end = off
			crc = 0
			continue
		}
		total := int64(length) + walPad(length)
		if length > walMaxEntrySize || off+walFrameHeaderLen+total > size {
			r.damage = corrupt(off, batchIndexes(), "a frame claims %d bytes, past the end of the file (%d bytes)", length, size)
			break
		}
		crc = crc32.Update(crc, castagnoli, fh[:])
		if typ == walFrameEntry {
			r.entries = append(r.entries, uint32(off))
		} else {
			r.indexOff, r.indexCommitted = off, false
			r.index = make([]byte, 0, length)
		}
		for left := total; left > 0; {
			chunk := payload[:min(left, int64(len(payload)))]
			if _, err := io.ReadFull(br, chunk); err != nil {
				return nil, fmt.Errorf("raft log segment %s at offset %d: %w", path, off, err)
			}
			crc = crc32.Update(crc, castagnoli, chunk)
			if typ == walFrameIndex && int64(len(r.index)) < int64(length) {
				r.index = append(r.index, chunk[:min(int64(len(chunk)), int64(length)-int64(len(r.index)))]...)
			}
			left -= int64(len(chunk))
		}
		off += walFrameHeaderLen + total
	}

	if tail {
		// Whatever follows the last good batch must be a torn write: no
		// intact batch may come after it.
		later, at := intactBatchAfter(f, r.end, size)
		if headerErr != "" && (r.committed > 0 || later) {
			return nil, corrupt(0, "", "%s", headerErr)
		}
		if later {
			if r.damage != nil {
				return nil, r.damage
			}
			return nil, corrupt(r.end, fmt.Sprintf("entries after %d", first()-1),
				"the data after this offset is cut off from the log, but holds an intact batch of entries at offset %d", at)
		}
		r.entries = r.entries[:r.committed]
		return r, nil
	}

	if r.damage != nil {
		return nil, r.damage
	}
	if info.MaxIndex < info.BaseIndex {
		return r, nil // sealed while empty: nothing to hold
	}
	if want := info.MaxIndex - info.BaseIndex + 1; uint64(r.committed) < want {
		return nil, corrupt(r.end, fmt.Sprintf("entries %d-%d", info.BaseIndex+uint64(r.committed), info.MaxIndex),
			"the segment ends after entry %d, but the segment list says it holds entries up to %d",
			info.BaseIndex+uint64(r.committed)-1, info.MaxIndex)
	}
	if !r.indexCommitted || uint64(r.indexOff)+walFrameHeaderLen != info.IndexStart {
		return nil, corrupt(int64(info.IndexStart), "", "the sealed segment's index is not where the segment list says (offset %d)", info.IndexStart)
	}
	for i := 0; i+4 <= len(r.index) && i/4 < len(r.entries); i += 4 {
		if got, want := binary.LittleEndian.Uint32(r.index[i:]), r.entries[i/4]; got != want {
			return nil, corrupt(int64(info.IndexStart)+int64(i), fmt.Sprintf("entry %d", info.BaseIndex+uint64(i/4)),
				"the segment's index points at offset %d, the entry is at %d", got, want)
		}
	}
	return r, nil
}

// intactBatchAfter reports whether the file holds, at or after from, a
// batch of frames closed by a commit frame whose CRC matches: a torn last
// write never leaves one (nothing is written after it).
func intactBatchAfter(f *os.File, from, size int64) (bool, int64) {
	if from >= size {
		return false, 0
	}
	// Mostly the rest of a preallocated file is zeros: look before reading
	// it all into memory.
	chunk := make([]byte, 1<<20)
	zero := true
	for at := from; at < size && zero; at += int64(len(chunk)) {
		n, err := f.ReadAt(chunk[:min(int64(len(chunk)), size-at)], at)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, 0
		}
		zero = len(bytes.Trim(chunk[:n], "\x00")) == 0
	}
	if zero {
		return false, 0
	}
	buf := make([]byte, size-from)
	if _, err := f.ReadAt(buf, from); err != nil && !errors.Is(err, io.EOF) {
		return false, 0
	}
	// A batch starts at from, or right after a commit frame.
	starts := []int64{0}
	for p := int64(walFrameHeaderLen); p+walFrameHeaderLen <= int64(len(buf)); p += walFrameHeaderLen {
		if buf[p] == walFrameCommit && buf[p+1] == 0 && buf[p+2] == 0 && buf[p+3] == 0 {
			starts = append(starts, p+walFrameHeaderLen)
			if len(starts) > 1<<20 {
				break
			}
		}
	}
	for _, s := range starts {
		if ok := batchAt(buf, s); ok {
			return true, from + s
		}
	}
	return false, 0
}

// batchAt reports whether buf holds, from s, one or more entry or index
// frames and then a commit frame whose CRC covers them.
func batchAt(buf []byte, s int64) bool {
	p, frames := s, 0
	for p+walFrameHeaderLen <= int64(len(buf)) {
		h := buf[p : p+walFrameHeaderLen]
		if h[1] != 0 || h[2] != 0 || h[3] != 0 {
			return false
		}
		l := binary.LittleEndian.Uint32(h[4:8])
		switch h[0] {
		case walFrameEntry, walFrameIndex:
			end := p + walFrameHeaderLen + int64(l) + walPad(l)
			if l > walMaxEntrySize || end > int64(len(buf)) {
				return false
			}
			p, frames = end, frames+1
		case walFrameCommit:
			return frames > 0 && crc32.Checksum(buf[s:p], castagnoli) == l
		default:
			return false
		}
	}
	return false
}

// recordTailRotation finishes a rotation that raft-wal sealed on disk but
// never recorded (its metadata commit failed, e.g. for lack of space): it
// marks the tail sealed and lists a new, empty tail after it, the state a
// successful rotation commits. raft-wal creates the new segment's file when
// it opens the log.
func recordTailRotation(dir string, sum walSummary, segmentSize int) error {
	var db metadb.BoltMetaDB
	st, err := db.Load(dir)
	if err != nil {
		return fmt.Errorf("read raft log metadata in %s: %w", dir, err)
	}
	defer db.Close()
	n := len(st.Segments)
	if n == 0 {
		return nil
	}
	now := time.Now()
	tail := &st.Segments[n-1]
	tail.SealTime = now
	tail.MaxIndex = sum.tailLastIndex
	tail.IndexStart = sum.tailIndexStart
	next := types.SegmentInfo{
		ID:         st.NextSegmentID,
		BaseIndex:  sum.tailLastIndex + 1,
		MinIndex:   sum.tailLastIndex + 1,
		SizeLimit:  uint32(segmentSize),
		Codec:      tail.Codec,
		CreateTime: now,
	}
	st.NextSegmentID++
	st.Segments = append(st.Segments, next)
	if err := db.CommitState(st); err != nil {
		return fmt.Errorf("record the raft log's next segment in %s: %w", dir, err)
	}
	return nil
}

// checkSnapshotDirs finds snapshot directories raft cannot list (their
// meta.json unreadable): raft skips them without a word and would start
// from an older snapshot. listed are the snapshots raft lists.
func checkSnapshotDirs(dataDir string, listed []*raft.SnapshotMeta) error {
	dir := filepath.Join(dataDir, "snapshots")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshots %s: %w", dir, err)
	}
	known := map[string]bool{}
	var newest uint64
	for _, m := range listed {
		known[m.ID] = true
		newest = max(newest, m.Index)
	}
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") || known[e.Name()] {
			continue
		}
		// raft names a snapshot term-index-milliseconds.
		parts := strings.Split(e.Name(), "-")
		if len(parts) != 3 {
			continue
		}
		index, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil || index < newest {
			continue // an older one: raft does not need it
		}
		metaPath := filepath.Join(dir, e.Name(), "meta.json")
		what := "raft cannot read its meta.json"
		if b, err := os.ReadFile(metaPath); err != nil {
			what += ": " + err.Error()
		} else {
			var m raft.SnapshotMeta
			if err := json.Unmarshal(b, &m); err != nil {
				what += ": " + err.Error()
			} else {
				what = fmt.Sprintf("raft does not list it (version %d)", m.Version)
			}
		}
		return &CorruptError{File: metaPath, Offset: -1, Index: fmt.Sprintf("snapshot at index %d", index),
			What: what + "; it is newer than every snapshot raft could use"}
	}
	return nil
}

// removeUnfinishedSnapshots deletes snapshots/*.tmp: snapshots that were
// being written when the process stopped. raft renames a snapshot's
// directory from NAME.tmp to NAME only after its data and meta are synced,
// so a .tmp directory was never used and never will be; raft's store
// leaves it in place and warns about it on every List, which the disk
// guard calls several times a second. It runs before the store opens,
// under the data-dir lock, so no snapshot is being written.
func removeUnfinishedSnapshots(dataDir string, log interface{ Info(string, ...any) }) error {
	dir := filepath.Join(dataDir, "snapshots")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshots %s: %w", dir, err)
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove unfinished snapshot %s: %w", p, err)
		}
		log.Info("removed a snapshot left unfinished by a stop while it was written", "dir", p)
	}
	return nil
}
