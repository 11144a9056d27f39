package node

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// A full disk (docs/design.md "A full disk").
//
// diskGuard decides whether this member takes writes that add data. It
// refuses them (DISK_FULL) while the data dir's filesystem has less free
// space than the stores may need next (the reserve), while a store write
// waits for space, and after a log append or snapshot failed for lack of
// space until the reserve is free again; and (QUOTA_EXCEEDED) while the data
// dir holds QuotaBytes or more. Writes that add nothing (deletes, releases,
// keepalives, ticks) still go through, so space can be freed and sessions
// live on.
//
// When the disk really runs out, no store write may leave the log in a
// state it cannot leave (diskstore.go): a log segment that cannot be
// preallocated is created without; a log append that fails is rolled back
// and reported (appendFailed), and raft sends it again later; the writes
// whose failure raft cannot recover from (its term and vote, the WAL's
// segment list, the append after a tail truncation) wait and retry (retry).
// A member whose append failed, or whose store write waits, stands for no
// election (demoted): it would only win, fail its first entry, step down
// and start over, one term after another.
type diskGuard struct {
	dir        string
	name       string // the member's
	log        *slog.Logger
	quota      int64        // 0: none
	logReserve int64        // the log store's next allocation
	slack      int64        // in-flight entries and metadata growth
	snapSize   func() int64 // the newest snapshot's size
	testFixed  int64        // Config.TestDiskReserve

	// blocking: store writes wait for space (set once raft runs; before,
	// Start fails with the error instead of hanging).
	blocking atomic.Bool
	done     chan struct{} // closed by stop: waits end with their error

	state atomic.Pointer[diskState]

	mu         sync.Mutex
	stalls     int   // store writes waiting for space
	stallErr   error // what the first of them met
	logFailed  error // an append failed for lack of space
	snapFailed error // a snapshot failed for lack of space
	changed    chan struct{}
	wake       chan struct{}
	raft       *raft.Raft
	normal     raft.ReloadableConfig // timeouts to restore after a demotion
	demoted    bool
	stopped    bool
}

// diskState is what the guard decided at its last check.
type diskState struct {
	full                *Error // DISK_FULL for writes that add data, or nil
	quota               *Error // QUOTA_EXCEEDED, or nil
	free, used, reserve int64
}

const (
	// diskCheckInterval: how often free space and the data dir's size are
	// measured, and how often a store write waiting for space retries.
	diskCheckInterval = 250 * time.Millisecond
	// demotedTimeout is the heartbeat and election timeout of a member whose
	// log cannot append: it never campaigns, and as leader it stops sending
	// heartbeats so that the others elect a member that can write.
	demotedTimeout = 24 * time.Hour
)

func newDiskGuard(dir, name string, log *slog.Logger, quota, logReserve, slack, testFixed int64, snapSize func() int64) *diskGuard {
	g := &diskGuard{
		dir: dir, name: name, log: log, quota: quota, logReserve: logReserve, slack: slack, testFixed: testFixed,
		snapSize: snapSize,
		done:     make(chan struct{}),
		changed:  make(chan struct{}),
		wake:     make(chan struct{}, 1),
	}
	g.state.Store(&diskState{})
	return g
}

// noSpace reports whether err says the filesystem (or the user's disk
// quota) has no room.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// refusal is the error a write that adds data gets now, nil when accepted.
func (g *diskGuard) refusal() error {
	st := g.state.Load()
	switch {
	case st.full != nil:
		return st.full
	case st.quota != nil:
		return st.quota
	}
	return nil
}

// watch returns the current refusal and a channel closed at the next change.
func (g *diskGuard) watch() (<-chan struct{}, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed, g.refusal()
}

// stalled returns an error while a store write waits for space: appends
// fail at once rather than queue behind it.
func (g *diskGuard) stalled() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stalls == 0 {
		return nil
	}
	return fmt.Errorf("data dir full: %s: a store write waits for space: %w", g.dir, g.stallErr)
}

// retry runs op until it succeeds, fails for another reason than space, or
// the guard stops (then op's last error). While op fails for lack of space
// the member counts as stalled. Before raft runs it does not wait.
func (g *diskGuard) retry(what string, op func() error) error {
	err := op()
	if err == nil || !noSpace(err) || !g.blocking.Load() {
		return err
	}
	g.mu.Lock()
	g.stalls++
	if g.stalls == 1 {
		g.stallErr = err
	}
	g.mu.Unlock()
	g.log.Warn("data dir full: a store write waits for space; this member refuses writes and stands for no election until it succeeds",
		"dir", g.dir, "write", what, "err", err)
	g.kick()
	defer func() {
		g.mu.Lock()
		g.stalls--
		g.mu.Unlock()
		g.kick()
	}()
	t := time.NewTicker(diskCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-g.done:
			return err
		case <-t.C:
		}
		if err = op(); err == nil || !noSpace(err) {
			if err == nil {
				g.log.Info("data dir has room again: the waiting store write succeeded", "dir", g.dir, "write", what)
			}
			return err
		}
	}
}

// waitRoom waits (once raft runs) until no store write waits for space and
// no append failed for lack of space since the reserve was last free, or
// the guard stops.
func (g *diskGuard) waitRoom(what string) error {
	if !g.blocking.Load() {
		return nil
	}
	t := time.NewTicker(diskCheckInterval)
	defer t.Stop()
	logged := false
	for {
		g.mu.Lock()
		ok, why := g.stalls == 0 && g.logFailed == nil, g.logFailed
		if why == nil {
			why = g.stallErr
		}
		g.mu.Unlock()
		if ok {
			return nil
		}
		if !logged {
			g.log.Warn("data dir full: waiting for room", "dir", g.dir, "write", what, "err", why)
			logged = true
		}
		select {
		case <-g.done:
			return fmt.Errorf("data dir full: %s: %s: %w", g.dir, what, why)
		case <-t.C:
		}
	}
}

// appendFailed records a log append (or truncation) that failed for lack
// of space: refuse writes and stand for no election until the reserve is
// free again.
func (g *diskGuard) appendFailed(err error) {
	g.mu.Lock()
	first := g.logFailed == nil
	g.logFailed = err
	g.mu.Unlock()
	if first {
		g.log.Warn("data dir full: a log append failed; this member refuses writes and stands for no election until there is room",
			"dir", g.dir, "err", err)
	}
	g.kick()
}

// snapshotFailed records a snapshot that failed for lack of space. Raft
// tries again at its next snapshot interval.
func (g *diskGuard) snapshotFailed(err error) {
	g.mu.Lock()
	first := g.snapFailed == nil
	g.snapFailed = err
	g.mu.Unlock()
	if first {
		g.log.Warn("data dir full: a snapshot failed; this member refuses writes until there is room", "dir", g.dir, "err", err)
	}
	g.kick()
}

// kick asks run for a check now.
func (g *diskGuard) kick() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// setRaft lets the guard demote r (and remembers its timeouts); from now on
// store writes wait for space.
func (g *diskGuard) setRaft(r *raft.Raft) {
	g.mu.Lock()
	g.raft = r
	g.normal = r.ReloadableConfig()
	g.mu.Unlock()
	g.blocking.Store(true)
	g.check()
}

// run checks every diskCheckInterval (or when kicked) until done closes.
func (g *diskGuard) run() {
	t := time.NewTicker(diskCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-t.C:
		case <-g.wake:
		}
		g.check()
	}
}

// stop ends waiting store writes (with their error) and the checks.
func (g *diskGuard) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.stopped {
		g.stopped = true
		close(g.done)
	}
}

// check measures the data dir and updates the state, the watchers and the
// demotion.
func (g *diskGuard) check() {
	free, ferr := freeBytes(g.dir)
	var used int64
	var uerr error
	if g.quota > 0 {
		used, uerr = dirBytes(g.dir)
	}
	snap := g.snapSize()
	need := g.logReserve + snap + g.slack
	reserve := need // below it, writes that add data are refused
	switch {
	case g.testFixed > 0:
		reserve = g.testFixed
	case g.testFixed < 0:
		reserve = 0
	}
	if ferr != nil {
		g.log.Warn("cannot measure free space of the data dir", "dir", g.dir, "err", ferr)
	}
	if uerr != nil {
		g.log.Warn("cannot measure the size of the data dir", "dir", g.dir, "err", uerr)
	}
	// A failure for lack of space is forgotten once what the stores may
	// need next is free (whatever the test reserve).
	roomy := ferr == nil && free >= need

	g.mu.Lock()
	defer g.mu.Unlock()
	if roomy && g.stalls == 0 {
		g.logFailed, g.snapFailed = nil, nil
	}
	st := &diskState{free: free, used: used, reserve: reserve}
	var why string
	switch {
	case g.stalls > 0:
		why = fmt.Sprintf("a store write waits for space (%v)", g.stallErr)
	case g.logFailed != nil:
		why = fmt.Sprintf("a log append failed (%v) and only %s is free, %s is needed", g.logFailed, bytesText(free), bytesText(need))
	case g.snapFailed != nil:
		why = fmt.Sprintf("a snapshot failed (%v) and only %s is free, %s is needed", g.snapFailed, bytesText(free), bytesText(need))
	case ferr == nil && free < reserve:
		why = fmt.Sprintf("%s free, less than the %s kept in reserve (next log allocation %s, newest snapshot %s, slack %s)",
			bytesText(free), bytesText(reserve), bytesText(g.logReserve), bytesText(snap), bytesText(g.slack))
	}
	if why != "" {
		st.full = &Error{Code: kvpb.ErrorCode_ERROR_CODE_DISK_FULL,
			Msg: fmt.Sprintf("data dir full: %s (member %s): %s; writes that add data are refused, deletes are accepted, and writes resume by themselves once there is room", g.dir, g.name, why)}
	}
	if g.quota > 0 && uerr == nil && used >= g.quota {
		st.quota = &Error{Code: kvpb.ErrorCode_ERROR_CODE_QUOTA_EXCEEDED,
			Msg: fmt.Sprintf("data dir over quota: %s (member %s) holds %s, --quota-bytes is %s; writes that add data are refused, deletes are accepted: delete data and take a snapshot (kvctl cluster snapshot) to free space, or raise the quota",
				g.dir, g.name, bytesText(used), bytesText(g.quota))}
	}
	old := g.state.Load()
	g.state.Store(st)
	if (old.full == nil) != (st.full == nil) || (old.quota == nil) != (st.quota == nil) {
		switch {
		case st.full != nil && old.full == nil:
			g.log.Warn("refusing writes that add data", "reason", st.full.Msg)
		case st.quota != nil && old.quota == nil && st.full == nil:
			g.log.Warn("refusing writes that add data", "reason", st.quota.Msg)
		case st.full == nil && st.quota == nil:
			g.log.Info("accepting writes again", "dir", g.dir, "free", bytesText(free))
		}
		close(g.changed)
		g.changed = make(chan struct{})
	}
	g.demoteLocked(g.stalls > 0 || g.logFailed != nil)
}

// demoteLocked makes the member stand for no election (on) or restores its
// timeouts (off).
func (g *diskGuard) demoteLocked(on bool) {
	if g.raft == nil || on == g.demoted || g.stopped {
		return
	}
	rc := g.raft.ReloadableConfig()
	rc.HeartbeatTimeout, rc.ElectionTimeout = g.normal.HeartbeatTimeout, g.normal.ElectionTimeout
	if on {
		rc.HeartbeatTimeout, rc.ElectionTimeout = demotedTimeout, demotedTimeout
	}
	if err := g.raft.ReloadConfig(rc); err != nil {
		g.log.Error("cannot change raft's timeouts", "demote", on, "err", err)
		return
	}
	g.demoted = on
	if on {
		g.log.Warn("this member's log cannot append: it stands for no election until it can", "dir", g.dir)
	} else {
		g.log.Info("this member's log appends again: it stands for election again", "dir", g.dir)
	}
}

// freeBytes is the space on dir's filesystem available to this process.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// dirBytes is the space the files under dir take on disk (allocated blocks,
// so a preallocated log segment counts in full).
func dirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walked (an old snapshot, a segment)
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += int64(st.Blocks) * 512
		} else {
			total += info.Size()
		}
		return nil
	})
	return total, err
}

// bytesText prints n in binary units ("3.5 MiB").
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// addsData reports whether cmd can make the replicated state larger. Those
// are refused while the data dir is full or over quota; the rest (deletes,
// releases, closes, keepalives, the leader's ticks) go through, so that
// space can be freed and sessions are kept alive. A Touch only moves a
// key's deadline, as a keepalive moves a session's: it goes through too. A
// Txn counts as adding data whatever its ops. An op not listed here (a new
// one) counts as adding data.
func addsData(cmd *kvpb.Command) bool {
	switch cmd.GetOp().(type) {
	case *kvpb.Command_Delete, *kvpb.Command_Touch, *kvpb.Command_KeepAlive, *kvpb.Command_KeepAliveBatch, *kvpb.Command_CloseSession,
		*kvpb.Command_Release, *kvpb.Command_CancelWait, *kvpb.Command_Renew, *kvpb.Command_Break,
		*kvpb.Command_Invalidate, *kvpb.Command_Tick, *kvpb.Command_Recover, *kvpb.Command_SetMember,
		*kvpb.Command_RemoveMember, *kvpb.Command_AuthDisable, *kvpb.Command_UserDelete,
		*kvpb.Command_UserChangePassword, *kvpb.Command_UserRevokeRole, *kvpb.Command_RoleDelete,
		*kvpb.Command_RoleRevokePermission:
		return false
	}
	return true
}

// refuseWrite is the DISK_FULL or QUOTA_EXCEEDED error of a command that
// adds data while this member's data dir is full or over its quota; nil
// otherwise. It is checked before anything is proposed: on the member that
// received the request, and again on the leader.
func (n *Node) refuseWrite(cmd *kvpb.Command) error {
	if n.disk == nil || !addsData(cmd) {
		return nil
	}
	err := n.disk.refusal()
	var e *Error
	if errors.As(err, &e) && e.Code == kvpb.ErrorCode_ERROR_CODE_DISK_FULL {
		n.NoteDiskFullRefusal()
	}
	return err
}

// WriteHealth reports whether this member takes writes that add data: a nil
// error, or the DISK_FULL or QUOTA_EXCEEDED error they get now. The channel
// closes at the next change (it is nil, never closing, with in-memory
// stores).
func (n *Node) WriteHealth() (<-chan struct{}, error) {
	if n.disk == nil {
		return nil, nil
	}
	return n.disk.watch()
}
