package api

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"go.etcd.io/bbolt"
)

// The Raft log stores a node can keep its log and vote in.
//
// LogStoreWAL (hashicorp/raft-wal, what Consul now runs) appends each batch
// of entries to a preallocated segment file with one fsync. LogStoreBolt
// (raft-boltdb/v2) commits each batch as a bbolt transaction: two fsyncs,
// data pages and then the meta page. hashicorp/raft has the leader store an
// entry before it sends it to followers, so a write waits for the leader's
// sync and then a follower's: four syncs with bolt, two with the WAL. Both
// sync every append before it is acknowledged; neither skips durability.
const (
	LogStoreWAL  = "wal"
	LogStoreBolt = "bolt"
)

// Files and directories a log store leaves in the data dir; their presence
// tells which store an existing data dir uses.
const (
	walDirName   = "wal"
	boltFileName = "raft.db"
	lockFileName = "kvd.lock"
)

// stores is an opened Raft log and stable store.
type stores struct {
	kind   string
	logs   raft.LogStore
	stable raft.StableStore
	close  func() error
}

// detectLogStore names the store an existing data dir holds, or "" for a
// data dir with neither.
func detectLogStore(dir string) (string, error) {
	_, werr := os.Stat(filepath.Join(dir, walDirName))
	_, berr := os.Stat(filepath.Join(dir, boltFileName))
	hasWAL, hasBolt := werr == nil, berr == nil
	switch {
	case hasWAL && hasBolt:
		return "", fmt.Errorf("data dir %s holds both a WAL (%s/) and a bolt log (%s): remove the one not in use",
			dir, walDirName, boltFileName)
	case hasWAL:
		return LogStoreWAL, nil
	case hasBolt:
		return LogStoreBolt, nil
	}
	return "", nil
}

// chooseLogStore settles which store to open: the one the data dir already
// holds, else want, else the WAL. A want that contradicts the data dir is an
// error, never a silent second log beside the first.
func chooseLogStore(dir, want string) (string, error) {
	if want != "" && want != LogStoreWAL && want != LogStoreBolt {
		return "", fmt.Errorf("log store %q: want %q or %q", want, LogStoreWAL, LogStoreBolt)
	}
	have, err := detectLogStore(dir)
	if err != nil {
		return "", err
	}
	switch {
	case have != "" && want != "" && have != want:
		return "", fmt.Errorf("log store %q asked for, but data dir %s already holds a %q log: "+
			"start with --log-store %s (or leave it unset)", want, dir, have, have)
	case have != "":
		return have, nil
	case want != "":
		return want, nil
	}
	return LogStoreWAL, nil
}

// openStores opens the data dir's log and stable store (kind from
// chooseLogStore).
func openStores(dir, kind string, hlog hclog.Logger) (*stores, error) {
	switch kind {
	case LogStoreWAL:
		wdir := filepath.Join(dir, walDirName)
		if err := os.MkdirAll(wdir, 0o700); err != nil {
			return nil, fmt.Errorf("raft log %s: %w", wdir, err)
		}
		w, err := wal.Open(wdir, wal.WithLogger(hlog.Named("wal")))
		if err != nil {
			return nil, fmt.Errorf("open raft log %s: %w", wdir, err)
		}
		return &stores{kind: kind, logs: w, stable: w, close: w.Close}, nil
	case LogStoreBolt:
		path := filepath.Join(dir, boltFileName)
		bs, err := raftboltdb.New(raftboltdb.Options{
			Path: path,
			BoltOptions: &bbolt.Options{
				Timeout:        2 * time.Second, // another process holds the file
				NoFreelistSync: true,
				FreelistType:   bbolt.FreelistMapType,
			},
		})
		if err != nil {
			if errors.Is(err, bbolt.ErrTimeout) {
				return nil, fmt.Errorf("open raft log %s: locked by another process", path)
			}
			return nil, fmt.Errorf("open raft log %s: %w", path, err)
		}
		return &stores{kind: kind, logs: bs, stable: bs, close: bs.Close}, nil
	}
	return nil, fmt.Errorf("log store %q: want %q or %q", kind, LogStoreWAL, LogStoreBolt)
}

// lockDataDir takes an exclusive lock on the data dir for as long as the
// returned file stays open, so a second kvd on the same dir fails at once
// with a clear error (raft-wal's own bbolt meta file would wait forever).
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s: locked by another process (%s)", dir, lockFileName)
		}
		return nil, fmt.Errorf("data dir %s: lock %s: %w", dir, lockFileName, err)
	}
	return f, nil
}
