package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// The Raft log stores a node can keep its log and vote in.
//
// LogStoreWAL (hashicorp/raft-wal, the log store behind Consul's WAL
// backend) appends each batch of entries to a preallocated segment file
// with one fsync. LogStoreBolt
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
	walDirName      = "wal"
	walMetaFileName = "wal-meta.db" // raft-wal's metadb.FileName
	boltFileName    = "raft.db"
	lockFileName    = "kvd.lock"
)

// stores is an opened Raft log and stable store.
type stores struct {
	logs   raft.LogStore
	stable raft.StableStore
	close  func() error
}

// detectLogStore names the store an existing data dir holds, or "" for a
// data dir with neither. A WAL counts once raft-wal has written its meta
// file (an empty wal/ is what a failed first start leaves). Only "does not
// exist" means absent: any other error is returned, never taken as a sign
// to start a new, empty log.
func detectLogStore(dir string) (string, error) {
	exists := func(name string) (bool, error) {
		_, err := os.Stat(filepath.Join(dir, name))
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, fs.ErrNotExist):
			return false, nil
		}
		return false, fmt.Errorf("data dir %s: %w", dir, err)
	}
	hasWAL, err := exists(filepath.Join(walDirName, walMetaFileName))
	if err != nil {
		return "", err
	}
	hasBolt, err := exists(boltFileName)
	if err != nil {
		return "", err
	}
	switch {
	case hasWAL && hasBolt:
		return "", fmt.Errorf("data dir %s holds both a WAL (%s/) and a bolt log (%s): kvd will not guess which "+
			"is current; move the stale one out of the data dir (the one whose files changed last is the one a node last ran on)",
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
			"ask for %q or leave the log store unset", want, dir, have, have)
	case have != "":
		return have, nil
	case want != "":
		return want, nil
	}
	return LogStoreWAL, nil
}

// openStores opens the data dir's log and stable store (kind from
// chooseLogStore), wrapped so that a full disk makes them wait or refuse
// (see diskGuard). A WAL is checked for corruption before it is opened.
// fsync observes each fsync of a WAL segment.
func openStores(dir, kind string, hlog hclog.Logger, fsync prometheus.Observer, g *diskGuard, segmentBytes int) (*stores, error) {
	switch kind {
	case LogStoreWAL:
		wdir := filepath.Join(dir, walDirName)
		if err := os.MkdirAll(wdir, 0o700); err != nil {
			return nil, fmt.Errorf("raft log %s: %w", wdir, err)
		}
		sum, err := checkWAL(wdir)
		if err != nil {
			return nil, err
		}
		if sum.tailSealed {
			hlog.Warn("the raft log's last segment was sealed but the next one was never recorded "+
				"(a rotation that failed, e.g. for lack of space): recording it now",
				"dir", wdir, "last_index", sum.tailLastIndex)
			if err := recordTailRotation(wdir, sum, segmentBytes); err != nil {
				return nil, err
			}
		}
		w, err := wal.Open(wdir,
			wal.WithLogger(hlog.Named("wal")),
			wal.WithSegmentSize(segmentBytes),
			wal.WithSegmentFiler(segment.NewFiler(wdir, &spaceVFS{VFS: timedVFS{walfs.New(), fsync}, g: g})),
			wal.WithMetaStore(&spaceMeta{MetaStore: &metadb.BoltMetaDB{}, g: g}),
		)
		if err != nil {
			return nil, fmt.Errorf("open raft log %s: %w", wdir, dataDirErr(dir, err))
		}
		// raft-wal syncs what it writes inside wal/; the entry for wal/
		// itself is in the data dir.
		if err := syncDir(dir); err != nil {
			w.Close()
			return nil, err
		}
		return &stores{logs: &spaceLog{LogStore: w, g: g}, stable: &spaceStable{StableStore: w, g: g}, close: w.Close}, nil
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
			if errors.Is(err, bolterrors.ErrTimeout) {
				return nil, fmt.Errorf("open raft log %s: locked by another process", path)
			}
			return nil, fmt.Errorf("open raft log %s: %w", path, dataDirErr(dir, err))
		}
		// bbolt syncs the file, not the directory entry that names it.
		if err := syncDir(dir); err != nil {
			bs.Close()
			return nil, err
		}
		return &stores{logs: &spaceLog{LogStore: bs, g: g}, stable: &spaceStable{StableStore: bs, g: g}, close: bs.Close}, nil
	}
	return nil, fmt.Errorf("log store %q: want %q or %q", kind, LogStoreWAL, LogStoreBolt)
}

// logReserve is what the log store may allocate at once: raft-wal
// preallocates each new segment; bbolt grows its file in chunks of up to
// 16 MiB (its default AllocSize).
func logReserve(kind string, segmentBytes int) int64 {
	if kind == LogStoreBolt {
		return boltAllocSize
	}
	return int64(segmentBytes)
}

// boltAllocSize is bbolt's default DB.AllocSize.
const boltAllocSize = 16 << 20

// dataDirErr names a full data dir in err ("data dir full: ...").
func dataDirErr(dir string, err error) error {
	if noSpace(err) {
		return fmt.Errorf("data dir full: %s: %w", dir, err)
	}
	return err
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

// syncDir makes the entries of dir (files and directories created in it)
// durable: without it a power loss soon after a first start could lose the
// log's file or directory, and with it the node's term and vote.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("data dir %s: sync: %w", dir, err)
	}
	return nil
}
