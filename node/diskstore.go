package node

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// The stores as raft sees them, wrapped so that a full disk makes the
// member wait or refuse instead of wedging (see diskGuard).

// spaceLog is the raft.LogStore under raft's LogCache. While a store write
// waits for space, appends and truncations fail at once (raft then steps a
// leader down, and a follower answers the leader "not stored"); an append
// that fails for lack of space is reported to the guard. raft-wal and
// raft-boltdb leave nothing of a failed append behind (raft-wal rolls its
// writer back, bbolt its transaction), so raft may send the same entries
// again later.
type spaceLog struct {
	raft.LogStore
	g *diskGuard
}

var _ raft.MonotonicLogStore = (*spaceLog)(nil)

func (l *spaceLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

func (l *spaceLog) StoreLogs(logs []*raft.Log) error {
	if err := l.g.stalled(); err != nil {
		return err
	}
	err := l.LogStore.StoreLogs(logs)
	if err != nil && noSpace(err) {
		l.g.appendFailed(err)
	}
	return err
}

func (l *spaceLog) DeleteRange(min, max uint64) error {
	if err := l.g.stalled(); err != nil {
		return err
	}
	err := l.LogStore.DeleteRange(min, max)
	if err != nil && noSpace(err) {
		l.g.appendFailed(err)
	}
	return err
}

// IsMonotonic passes on the wrapped store's answer: raft-wal allows no gaps,
// which changes what raft does to the log after a snapshot restore.
func (l *spaceLog) IsMonotonic() bool {
	m, ok := l.LogStore.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// spaceStable waits for space to store raft's term and vote: raft panics
// when it cannot store a new term.
type spaceStable struct {
	raft.StableStore
	g *diskGuard
}

func (s *spaceStable) Set(key, val []byte) error {
	return s.g.retry("store raft's "+string(key), func() error { return s.StableStore.Set(key, val) })
}

func (s *spaceStable) SetUint64(key []byte, val uint64) error {
	return s.g.retry("store raft's "+string(key), func() error { return s.StableStore.SetUint64(key, val) })
}

// spaceFiler waits for space to create a WAL segment. Left to itself,
// raft-wal's rotation gives up after one failed attempt, and its tail then
// stays sealed: every later append fails with "segment is sealed" until the
// process restarts.
type spaceFiler struct {
	types.SegmentFiler
	dir string
	g   *diskGuard
}

func (f *spaceFiler) Create(info types.SegmentInfo) (types.SegmentWriter, error) {
	name := segment.FileName(info)
	var w types.SegmentWriter
	err := f.g.retry("create log segment "+name, func() error {
		var err error
		w, err = f.SegmentFiler.Create(info)
		if err != nil && noSpace(err) {
			// raft-wal created the file (O_EXCL) and then failed to
			// preallocate it; it stays behind and would make the next
			// attempt fail with "file exists". Nothing was written to it.
			if rerr := os.Remove(filepath.Join(f.dir, name)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				f.g.log.Warn("cannot remove a half-created log segment", "file", name, "err", rerr)
			}
		}
		return err
	})
	return w, err
}

// spaceMeta waits for space to commit the WAL's metadata (segment list).
type spaceMeta struct {
	types.MetaStore
	g *diskGuard
}

func (m *spaceMeta) CommitState(st types.PersistentState) error {
	return m.g.retry("commit the log's segment list", func() error { return m.MetaStore.CommitState(st) })
}

// spaceSnapshots reports snapshots that fail for lack of space, and
// remembers why raft could not open a snapshot (checkRestored).
type spaceSnapshots struct {
	raft.SnapshotStore
	g *diskGuard

	mu        sync.Mutex
	openErrs  map[string]error // by snapshot ID, the errors of Open
	openOrder []string         // IDs in the order raft opened them
}

func (s *spaceSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		if noSpace(err) && s.g != nil {
			s.g.snapshotFailed(err)
		}
		return nil, err
	}
	if s.g == nil {
		return sink, nil
	}
	return &spaceSink{SnapshotSink: sink, g: s.g}, nil
}

func (s *spaceSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	s.mu.Lock()
	if s.openErrs == nil {
		s.openErrs = map[string]error{}
	}
	s.openErrs[id] = err
	s.openOrder = append(s.openOrder, id)
	s.mu.Unlock()
	return meta, rc, err
}

// opened returns the IDs raft opened so far, in order, with their errors.
func (s *spaceSnapshots) opened() ([]string, map[string]error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.openOrder...), s.openErrs
}

// spaceSink reports a snapshot write that failed for lack of space.
type spaceSink struct {
	raft.SnapshotSink
	g *diskGuard
}

func (s *spaceSink) Write(p []byte) (int, error) {
	n, err := s.SnapshotSink.Write(p)
	if err != nil && noSpace(err) {
		s.g.snapshotFailed(err)
	}
	return n, err
}

func (s *spaceSink) Close() error {
	err := s.SnapshotSink.Close()
	if err != nil && noSpace(err) {
		s.g.snapshotFailed(err)
	}
	return err
}
