package node

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/types"
)

// The stores as raft sees them, wrapped so that a full disk makes the
// member wait or refuse instead of wedging (see diskGuard).

// spaceLog is the raft.LogStore under raft's LogCache. An append that
// fails for lack of space is reported to the guard (which refuses writes
// and demotes the member) and returned to raft: a leader steps down, a
// follower answers "not stored" and the leader sends the entries again
// later. raft-wal and raft-boltdb leave nothing of a failed append behind
// (raft-wal rolls its writer back and writes the batch again from the same
// offset; bbolt rolls its transaction back). While a store write waits for
// space, appends fail at once instead of queueing behind it.
//
// Two cases wait instead of failing, because raft cannot recover from the
// failure: the append that follows a truncation of the log's tail (raft
// truncates a conflicting suffix, then appends; when the append fails it
// keeps the old last index, and the follower refuses the leader's entries
// until it restarts), and the truncation itself while the disk is full
// (raft-wal seals the tail before it truncates, and a seal cut short by a
// full disk leaves a tail that takes no more entries).
type spaceLog struct {
	raft.LogStore
	g *diskGuard
	// truncated: the last change was a truncation of the tail, the next
	// append must not fail.
	truncated atomic.Bool
}

var _ raft.MonotonicLogStore = (*spaceLog)(nil)

func (l *spaceLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

func (l *spaceLog) StoreLogs(logs []*raft.Log) error {
	if err := l.g.stalled(); err != nil {
		return err
	}
	if l.truncated.Load() {
		err := l.g.retry("append after truncating the log", func() error { return l.LogStore.StoreLogs(logs) })
		if err == nil {
			l.truncated.Store(false)
		}
		return l.named(err)
	}
	err := l.LogStore.StoreLogs(logs)
	if err != nil && noSpace(err) {
		l.g.appendFailed(err)
	}
	return l.named(err)
}

func (l *spaceLog) DeleteRange(min, max uint64) error {
	first, err := l.LogStore.FirstIndex()
	if err != nil {
		return err
	}
	last, err := l.LogStore.LastIndex()
	if err != nil {
		return err
	}
	if min <= first || max < last {
		// A head truncation (after a snapshot, or of the whole log when a
		// snapshot is installed): it frees space.
		return l.named(l.LogStore.DeleteRange(min, max))
	}
	if err := l.g.waitRoom("truncate the log's tail"); err != nil {
		return err
	}
	err = l.g.retry("truncate the log's tail", func() error { return l.LogStore.DeleteRange(min, max) })
	if err == nil {
		l.truncated.Store(true)
	}
	return l.named(err)
}

// named says "data dir full" in an error for lack of space.
func (l *spaceLog) named(err error) error {
	if err != nil && noSpace(err) && !strings.HasPrefix(err.Error(), "data dir full") {
		return fmt.Errorf("data dir full: %s: %w", l.g.dir, err)
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

// spaceVFS creates WAL segments without preallocating them when the disk
// has no room for that. Left to itself, raft-wal gives up a rotation whose
// new segment cannot be preallocated, and its sealed tail then refuses
// every append ("segment is sealed") until the process restarts. A segment
// that is not preallocated grows as entries are written; an append that
// finds no room fails and is written again later (see spaceLog).
type spaceVFS struct {
	types.VFS
	g *diskGuard
}

func (v *spaceVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	f, err := v.VFS.Create(dir, name, size)
	if err == nil || !noSpace(err) || size == 0 {
		return f, err
	}
	// raft-wal created the file (O_EXCL) and then failed to preallocate
	// it; nothing was written to it. Remove it and create it again, empty.
	if rerr := os.Remove(filepath.Join(dir, name)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return nil, err
	}
	v.g.log.Warn("data dir full: creating a log segment without preallocating it", "dir", dir, "segment", name, "err", err)
	err = v.g.retry("create log segment "+name, func() error {
		var err error
		f, err = v.VFS.Create(dir, name, 0)
		return err
	})
	return f, err
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
	done      bool             // the start-up check is over: stop recording
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
	if !s.done {
		if s.openErrs == nil {
			s.openErrs = map[string]error{}
		}
		s.openErrs[id] = err
		s.openOrder = append(s.openOrder, id)
	}
	s.mu.Unlock()
	return meta, rc, err
}

// opened returns the IDs raft opened while it started, in order, with their
// errors, and stops recording (raft opens snapshots later to send them).
func (s *spaceSnapshots) opened() ([]string, map[string]error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	return s.openOrder, s.openErrs
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
