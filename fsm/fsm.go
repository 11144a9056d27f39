package fsm

import (
	"io"

	"github.com/hashicorp/raft"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// CONTRACT STUB: signatures are fixed; bodies to be written.

// FSM is the replicated state machine. Apply, Snapshot and Restore are called
// by raft; the read methods may be called concurrently from any goroutine.
type FSM struct{}

// New returns an empty state machine.
func New() *FSM { return &FSM{} }

// Apply applies one committed log entry. For raft.LogCommand entries the data
// is a marshalled kvpb.Command and the result is a *kvpb.CommandResult; other
// entry types return nil.
func (f *FSM) Apply(l *raft.Log) interface{} { panic("unimplemented") }

// Snapshot captures the state cheaply; Persist encodes it.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) { panic("unimplemented") }

// Restore replaces the whole state with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error { panic("unimplemented") }

// AppliedIndex is the index of the last applied entry.
func (f *FSM) AppliedIndex() uint64 { panic("unimplemented") }

// LogTime is the replicated clock after the last applied entry.
func (f *FSM) LogTime() int64 { panic("unimplemented") }

// Get returns the key, or nil when absent or expired at now.
func (f *FSM) Get(key []byte, now int64) *kvpb.KeyValue { panic("unimplemented") }

// List returns up to limit live keys with prefix, strictly after startAfter.
func (f *FSM) List(prefix, startAfter []byte, limit int, keysOnly bool, now int64) (kvs []*kvpb.KeyValue, more bool) {
	panic("unimplemented")
}

// Session returns a live session, or nil.
func (f *FSM) Session(id uint64, now int64) *kvpb.SessionInfo { panic("unimplemented") }

// Lock returns the lock's state, or nil when the fsm holds nothing for it.
func (f *FSM) Lock(name []byte, now int64) *kvpb.LockInfo { panic("unimplemented") }

// Locks lists locks with the prefix that are held or have waiters, by name.
func (f *FSM) Locks(prefix []byte, now int64) []*kvpb.LockInfo { panic("unimplemented") }

// CheckFence reports whether token still holds the lock at now, and the
// lock's current token (0: free).
func (f *FSM) CheckFence(name []byte, token uint64, now int64) (valid bool, current uint64) {
	panic("unimplemented")
}

// CacheEntry returns a cache entry and its state at now (nil, MISS if none).
func (f *FSM) CacheEntry(key []byte, now int64) (kvpb.CacheState, *kvpb.CacheEntry) {
	panic("unimplemented")
}

// CacheStats returns the replicated cache counters.
func (f *FSM) CacheStats() *kvpb.CacheStatsResponse { panic("unimplemented") }

// Members returns the members whose addresses came through the log, by name.
func (f *FSM) Members() []*kvpb.Member { panic("unimplemented") }

// NextDeadline is the earliest pending deadline in log time, 0 if none.
func (f *FSM) NextDeadline() int64 { panic("unimplemented") }

// StateHash is a hash of the replicated state (the snapshot encoding).
func (f *FSM) StateHash() []byte { panic("unimplemented") }

// WatchKind names what a Watch is on.
type WatchKind uint8

const (
	WatchLock  WatchKind = iota + 1 // a lock name: grant, release, queue change
	WatchCache                      // a cache key: store, lease change, invalidation
)

// Watch returns a channel closed the next time an applied entry changes the
// named lock or cache entry (including through expiry), and a func to stop
// watching. It never blocks Apply.
func (f *FSM) Watch(kind WatchKind, name []byte) (<-chan struct{}, func()) { panic("unimplemented") }
