package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/google/btree"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Snapshot format, version 2:
//
//	uvarint length, kvpb.SnapshotHeader
//	then records: uvarint length, one byte record kind, payload
//
// Payloads are existing kvpb messages, or small messages written by hand with
// protowire where the state has fields kvd.proto does not carry (their field
// numbers are listed at each kind). Records come in a fixed order (limits,
// counters, members by name, keys, sessions by id each followed by its dedup
// results by seq, locks, cache entries, then the auth record, roles by name
// and users by name), marshalled deterministically, so equal states give
// equal bytes.
//
// Version 2 added the auth records. A version 1 snapshot (written before
// auth existed) is still read: its auth state is empty, which is what it was.
// A build that reads only version 1 rejects version 2 instead of silently
// dropping users and roles.
//
// Version 3 added the body digest of each remembered result (recDedup field
// 4) and remembers results without values (see dedup.go). Results read from
// an older snapshot are slimmed as they are read and have digest 0: a retry
// of one of them is answered without comparing bodies.
const formatVersion = 5 // version 5: keys bound to sessions (KeyValue.session), lock values (LockInfo.value)

// oldestFormatVersion is the oldest snapshot format Restore reads.
const oldestFormatVersion = 1

type recordKind byte

const (
	recLimits   recordKind = 1  // kvpb.StateLimits
	recCounters recordKind = 2  // 1 max_bytes, 2 evictions, 3 stores, 4 stale_stores_rejected, 5 leases_granted, 6 leases_expired
	recMember   recordKind = 3  // kvpb.Member
	recKey      recordKind = 4  // kvpb.KeyValue
	recSession  recordKind = 5  // 1 kvpb.SessionInfo (no locks), 2 min_pending_seq
	recDedup    recordKind = 6  // 1 session, 2 seq, 3 kvpb.CommandResult, 4 body digest (version 3)
	recLock     recordKind = 7  // 1 kvpb.LockInfo (no expires_at; value and waiters' values from version 5), 2 packed waiter lock_delay_ms
	recCache    recordKind = 8  // 1 kvpb.CacheEntry, 2 has_value, 3 lease_ms, 4 packed waiter wait_until
	recAuth     recordKind = 9  // 1 enabled, 2 token_key, 3 key_index, 4 revision (version 2)
	recRole     recordKind = 10 // kvpb.Role (version 2)
	recUser     recordKind = 11 // 1 kvpb.User, 2 password_hash (version 2)
	recBreak    recordKind = 12 // 1 lock name, 2 broken token, 3 at, 4 reason, 5 index (version 4)
)

// maxRecord bounds one record's length when reading a snapshot.
const maxRecord = 1 << 30

// ErrSnapshotFormat is returned by Restore for a snapshot it cannot read.
var ErrSnapshotFormat = errors.New("fsm: bad snapshot")

var marshal = proto.MarshalOptions{Deterministic: true}

// snapshot is a point-in-time copy of the state. Its trees are copy-on-write
// clones and the sessions are copied, so Applies after capture cannot touch it.
type snapshot struct {
	index    uint64
	logTime  int64
	limits   *kvpb.StateLimits
	counters cacheCounters
	members  []*kvpb.Member
	kv       *btree.BTreeG[*kvItem]
	sessions []session // sorted by id; only the replicated fields and dedup
	locks    *btree.BTreeG[lockItem]
	cache    *btree.BTreeG[cacheItem]
	auth     authState
	breaks   []lastBreak // sorted by lock name
}

// capture copies the state. The caller holds the write lock.
func (s *state) capture() *snapshot {
	snap := &snapshot{
		index:    s.index,
		logTime:  s.logTime,
		limits:   proto.CloneOf(s.limits),
		counters: s.counters,
		members:  membersProto(s.members),
		kv:       s.kv.Clone(),
		locks:    s.locks.Clone(),
		cache:    s.cache.Clone(),
		auth:     s.auth.clone(),
		breaks:   s.sortedBreaks(),
	}
	ids := make([]uint64, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		se := s.sessions[id]
		snap.sessions = append(snap.sessions, session{
			id: se.id, ttlMs: se.ttlMs, expiresAt: se.expiresAt, createdAt: se.createdAt,
			name: se.name, owner: se.owner, minPending: se.minPending, dedup: se.dedup.Clone(),
		})
	}
	return snap
}

type recordWriter struct {
	w   io.Writer
	buf []byte // a record's length and kind
	key []byte // a key record's payload, reused
	err error
}

func (rw *recordWriter) raw(b []byte) {
	if rw.err != nil {
		return
	}
	rw.buf = binary.AppendUvarint(rw.buf[:0], uint64(len(b)))
	if _, rw.err = rw.w.Write(rw.buf); rw.err == nil {
		_, rw.err = rw.w.Write(b)
	}
}

// record writes a record without copying its payload.
func (rw *recordWriter) record(kind recordKind, payload []byte) {
	if rw.err != nil {
		return
	}
	rw.buf = binary.AppendUvarint(rw.buf[:0], uint64(1+len(payload)))
	rw.buf = append(rw.buf, byte(kind))
	if _, rw.err = rw.w.Write(rw.buf); rw.err == nil {
		_, rw.err = rw.w.Write(payload)
	}
}

// keyRecord writes a key's record. It is the one record there are millions
// of, so its payload is encoded by hand into a reused buffer: the bytes
// are exactly those of the deterministic marshalling of it.proto(false)
// (TestKeyRecordMatchesProto), which earlier builds wrote.
func (rw *recordWriter) keyRecord(it *kvItem) {
	rw.key = appendKeyValue(rw.key[:0], it)
	rw.record(recKey, rw.key)
}

// appendKeyValue appends a kvpb.KeyValue of it: fields in number order,
// zero values left out, as proto's deterministic marshalling writes them.
func appendKeyValue(b []byte, it *kvItem) []byte {
	if it.key != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, it.key)
	}
	b = appendBytes(b, 2, it.value)
	b = appendUint(b, 3, it.createIdx)
	b = appendUint(b, 4, it.modIdx)
	b = appendUint(b, 5, it.version)
	b = appendUint(b, 6, uint64(it.expiresAt))
	return appendUint(b, 7, it.session)
}

// parseKeyValue reads what appendKeyValue (or proto) wrote into a new item
// that owns its bytes. Fields it does not know are skipped, as
// proto.Unmarshal followed by the conversion of the known fields would.
func parseKeyValue(b []byte) (*kvItem, error) {
	it := &kvItem{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case typ == protowire.BytesType && (num == 1 || num == 2):
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			if num == 1 {
				it.key = string(v)
			} else {
				it.value = cloneBytes(v)
			}
			b = b[n:]
		case typ == protowire.VarintType && num >= 3 && num <= 7:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			switch num {
			case 3:
				it.createIdx = v
			case 4:
				it.modIdx = v
			case 5:
				it.version = v
			case 6:
				it.expiresAt = int64(v)
			case 7:
				it.session = v
			}
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return it, nil
}

func (rw *recordWriter) msg(kind recordKind, m proto.Message) {
	b, err := marshal.Marshal(m)
	if err != nil && rw.err == nil {
		rw.err = err
	}
	rw.record(kind, b)
}

// appendMsg appends m as field num of a hand-written record. A message
// that cannot be encoded (a string that is not UTF-8 that got into the
// state) fails the whole snapshot, as in msg: a snapshot is never written
// with a record missing.
func (rw *recordWriter) appendMsg(b []byte, num protowire.Number, m proto.Message) []byte {
	mb, err := marshal.Marshal(m)
	if err != nil && rw.err == nil {
		rw.err = fmt.Errorf("encode %T: %w", m, err)
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, mb)
}

func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendPacked(b []byte, num protowire.Number, vs []uint64) []byte {
	if len(vs) == 0 {
		return b
	}
	var p []byte
	for _, v := range vs {
		p = protowire.AppendVarint(p, v)
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, p)
}

// encode writes the snapshot stream.
func (snap *snapshot) encode(w io.Writer) error {
	rw := &recordWriter{w: w}
	hdr, err := marshal.Marshal(&kvpb.SnapshotHeader{FormatVersion: formatVersion, AppliedIndex: snap.index, LogTime: snap.logTime})
	if err != nil {
		return err
	}
	rw.raw(hdr)
	if snap.limits != nil {
		rw.msg(recLimits, snap.limits)
	}
	c := snap.counters
	var cb []byte
	cb = appendUint(cb, 1, c.maxBytes)
	cb = appendUint(cb, 2, c.evictions)
	cb = appendUint(cb, 3, c.stores)
	cb = appendUint(cb, 4, c.staleStoresRejected)
	cb = appendUint(cb, 5, c.leasesGranted)
	cb = appendUint(cb, 6, c.leasesExpired)
	rw.record(recCounters, cb)
	for _, m := range snap.members {
		rw.msg(recMember, m)
	}
	snap.kv.Ascend(func(it *kvItem) bool {
		rw.keyRecord(it)
		return rw.err == nil
	})
	for _, se := range snap.sessions {
		info := se.proto()
		info.Keys = 0 // derived: rebuilt from the keys' sessions on restore
		var b []byte
		b = rw.appendMsg(b, 1, info)
		b = appendUint(b, 2, se.minPending)
		rw.record(recSession, b)
		se.dedup.Ascend(func(d dedupEntry) bool {
			var b []byte
			b = appendUint(b, 1, se.id)
			b = appendUint(b, 2, d.seq)
			b = rw.appendMsg(b, 3, d.res)
			b = appendUint(b, 4, d.digest)
			rw.record(recDedup, b)
			return rw.err == nil
		})
	}
	snap.locks.Ascend(func(l lockItem) bool {
		info := &kvpb.LockInfo{
			Name: []byte(l.name), Token: l.token, Session: l.session, HeldSince: l.heldSince,
			DelayUntil: l.delayUntil, BrokenToken: l.brokenToken, BrokenAt: l.brokenAt,
			BrokenReason: l.brokenReason, LockDelayMs: l.lockDelayMs, Value: l.value,
		}
		var delays []uint64
		for _, w := range l.waiters {
			info.Waiters = append(info.Waiters, &kvpb.LockWaiter{Session: w.session, QueuedAt: w.queuedAt, WaitUntil: w.waitUntil, Value: w.value})
			delays = append(delays, uint64(w.lockDelayMs))
		}
		var b []byte
		b = rw.appendMsg(b, 1, info)
		b = appendPacked(b, 2, delays)
		rw.record(recLock, b)
		return rw.err == nil
	})
	snap.cache.Ascend(func(c cacheItem) bool {
		e := &kvpb.CacheEntry{
			Key: []byte(c.key), Value: c.value, FreshUntil: c.freshUntil, StaleUntil: c.staleUntil,
			FilledIndex: c.filledIdx, IsError: c.isError,
		}
		if c.lease.token != 0 {
			e.Lease = &kvpb.FillLease{Session: c.lease.session, Token: c.lease.token, ExpiresAt: c.lease.expiresAt}
		}
		var untils []uint64
		for _, w := range c.waiters {
			e.Waiters = append(e.Waiters, w.session)
			untils = append(untils, uint64(w.waitUntil))
		}
		var b []byte
		b = rw.appendMsg(b, 1, e)
		if c.hasValue {
			b = appendUint(b, 2, 1)
		}
		b = appendUint(b, 3, uint64(c.leaseMs))
		b = appendPacked(b, 4, untils)
		rw.record(recCache, b)
		return rw.err == nil
	})
	snap.encodeAuth(rw)
	for _, lb := range snap.breaks {
		var b []byte
		b = appendBytes(b, 1, []byte(lb.name))
		b = appendUint(b, 2, lb.token)
		b = appendUint(b, 3, uint64(lb.at))
		b = appendBytes(b, 4, []byte(lb.reason))
		b = appendUint(b, 5, lb.index)
		rw.record(recBreak, b)
	}
	return rw.err
}

// encodeAuth writes the auth record, then roles and users by name.
func (snap *snapshot) encodeAuth(rw *recordWriter) {
	a := &snap.auth
	var b []byte
	if a.enabled {
		b = appendUint(b, 1, 1)
	}
	b = appendBytes(b, 2, a.tokenKey)
	b = appendUint(b, 3, a.keyIndex)
	b = appendUint(b, 4, a.revision)
	rw.record(recAuth, b)
	a.roles.Ascend(func(r roleItem) bool {
		rw.msg(recRole, r.proto())
		return rw.err == nil
	})
	a.users.Ascend(func(u userItem) bool {
		var b []byte
		b = rw.appendMsg(b, 1, u.proto())
		b = appendBytes(b, 2, u.hash)
		rw.record(recUser, b)
		return rw.err == nil
	})
}

// fields parses a hand-written record into its fields: varints and bytes by
// field number (a repeated field keeps the last value, none is repeated).
type fields struct {
	varints map[protowire.Number]uint64
	bytes   map[protowire.Number][]byte
}

func parseFields(b []byte) (fields, error) {
	f := fields{varints: map[protowire.Number]uint64{}, bytes: map[protowire.Number][]byte{}}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return f, protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return f, protowire.ParseError(n)
			}
			f.varints[num], b = v, b[n:]
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return f, protowire.ParseError(n)
			}
			f.bytes[num], b = v, b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return f, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return f, nil
}

func unpack(b []byte) ([]uint64, error) {
	var out []uint64
	for len(b) > 0 {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		out, b = append(out, v), b[n:]
	}
	return out, nil
}

// readRecord reads the next record into buf when it has room, else into a
// new slice.
func readRecord(r *bufio.Reader, buf []byte) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > maxRecord {
		return nil, fmt.Errorf("record of %d bytes", n)
	}
	b := buf[:0]
	if uint64(cap(b)) < n {
		b = make([]byte, n)
	}
	b = b[:n]
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, io.ErrUnexpectedEOF
	}
	return b, nil
}

// decodeSnapshot reads a snapshot stream into a new state.
func decodeSnapshot(rd io.Reader) (*state, error) {
	r := bufio.NewReaderSize(rd, 1<<16)
	hb, err := readRecord(r, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrSnapshotFormat, err)
	}
	var hdr kvpb.SnapshotHeader
	if err := proto.Unmarshal(hb, &hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrSnapshotFormat, err)
	}
	if hdr.FormatVersion < oldestFormatVersion || hdr.FormatVersion > formatVersion {
		return nil, fmt.Errorf("%w: format version %d, this build reads versions %d to %d",
			ErrSnapshotFormat, hdr.FormatVersion, oldestFormatVersion, formatVersion)
	}
	s := newState()
	s.index, s.logTime = hdr.AppliedIndex, hdr.LogTime
	// Records are read into one reused buffer. A key's record is parsed
	// into an item that copies what it keeps; every other kind is decoded
	// from a copy of its own, since some keep slices of their record.
	var buf []byte
	for i := 1; ; i++ {
		b, err := readRecord(r, buf)
		if err == io.EOF {
			break
		}
		if err == nil && len(b) == 0 {
			err = errors.New("empty record")
		}
		if err == nil {
			buf = b
			if kind := recordKind(b[0]); kind == recKey {
				err = s.restoreKey(b[1:])
			} else {
				err = s.decodeRecord(kind, bytes.Clone(b[1:]))
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: %w", ErrSnapshotFormat, i, err)
		}
	}
	if hdr.FormatVersion < 3 {
		for _, se := range s.sessions {
			var all []dedupEntry
			se.dedup.Ascend(func(d dedupEntry) bool { all = append(all, d); return true })
			for _, d := range all {
				se.dedup.ReplaceOrInsert(dedupEntry{seq: d.seq, res: slim(d.res)})
			}
		}
	}
	s.rebuild()
	return s, nil
}

// restoreKey adds the key of a key record (its derived indexes are built
// by rebuild).
func (s *state) restoreKey(b []byte) error {
	it, err := parseKeyValue(b)
	if err != nil {
		return err
	}
	s.kv.ReplaceOrInsert(it)
	return nil
}

func (s *state) decodeRecord(kind recordKind, b []byte) error {
	switch kind {
	case recLimits:
		s.limits = &kvpb.StateLimits{}
		return proto.Unmarshal(b, s.limits)
	case recCounters:
		f, err := parseFields(b)
		s.counters = cacheCounters{
			maxBytes: f.varints[1], evictions: f.varints[2], stores: f.varints[3],
			staleStoresRejected: f.varints[4], leasesGranted: f.varints[5], leasesExpired: f.varints[6],
		}
		return err
	case recMember:
		var m kvpb.Member
		if err := proto.Unmarshal(b, &m); err != nil {
			return err
		}
		s.members[m.Name] = member{name: m.Name, peerAddr: m.PeerAddr, clientAddr: m.ClientAddr}
	case recKey:
		return s.restoreKey(b)
	case recSession:
		f, err := parseFields(b)
		if err != nil {
			return err
		}
		var info kvpb.SessionInfo
		if err := proto.Unmarshal(f.bytes[1], &info); err != nil {
			return err
		}
		se := newSession(info.Id)
		se.ttlMs, se.expiresAt, se.createdAt, se.name, se.owner = info.TtlMs, info.ExpiresAt, info.CreatedAt, info.Name, info.Owner
		se.minPending = f.varints[2]
		s.sessions[se.id] = se
	case recDedup:
		f, err := parseFields(b)
		if err != nil {
			return err
		}
		se := s.sessions[f.varints[1]]
		if se == nil {
			return fmt.Errorf("dedup result of unknown session %d", f.varints[1])
		}
		res := &kvpb.CommandResult{}
		if err := proto.Unmarshal(f.bytes[3], res); err != nil {
			return err
		}
		if bug("dedup-lost-on-restore") {
			return nil
		}
		se.dedup.ReplaceOrInsert(dedupEntry{seq: f.varints[2], res: res, digest: f.varints[4]})
	case recLock:
		f, err := parseFields(b)
		if err != nil {
			return err
		}
		var info kvpb.LockInfo
		if err := proto.Unmarshal(f.bytes[1], &info); err != nil {
			return err
		}
		delays, err := unpack(f.bytes[2])
		if err != nil {
			return err
		}
		l := lockItem{name: string(info.Name), token: info.Token, session: info.Session, heldSince: info.HeldSince,
			delayUntil: info.DelayUntil, brokenToken: info.BrokenToken, brokenAt: info.BrokenAt,
			brokenReason: info.BrokenReason, lockDelayMs: info.LockDelayMs, value: info.Value}
		for i, w := range info.Waiters {
			lw := lockWaiter{session: w.Session, queuedAt: w.QueuedAt, waitUntil: w.WaitUntil, value: w.Value}
			if i < len(delays) {
				lw.lockDelayMs = int64(delays[i])
			}
			l.waiters = append(l.waiters, lw)
		}
		s.locks.ReplaceOrInsert(l)
	case recCache:
		f, err := parseFields(b)
		if err != nil {
			return err
		}
		var e kvpb.CacheEntry
		if err := proto.Unmarshal(f.bytes[1], &e); err != nil {
			return err
		}
		untils, err := unpack(f.bytes[4])
		if err != nil {
			return err
		}
		c := cacheItem{key: string(e.Key), value: e.Value, hasValue: f.varints[2] != 0, freshUntil: e.FreshUntil,
			staleUntil: e.StaleUntil, filledIdx: e.FilledIndex, isError: e.IsError, leaseMs: int64(f.varints[3])}
		if e.Lease != nil {
			c.lease = fillLease{session: e.Lease.Session, token: e.Lease.Token, expiresAt: e.Lease.ExpiresAt}
		}
		for i, sess := range e.Waiters {
			w := cacheWaiter{session: sess}
			if i < len(untils) {
				w.waitUntil = int64(untils[i])
			}
			c.waiters = append(c.waiters, w)
		}
		s.cache.ReplaceOrInsert(c)
	case recAuth:
		f, err := parseFields(b)
		s.auth.enabled = f.varints[1] != 0
		s.auth.tokenKey = f.bytes[2]
		s.auth.keyIndex, s.auth.revision = f.varints[3], f.varints[4]
		return err
	case recRole:
		var r kvpb.Role
		if err := proto.Unmarshal(b, &r); err != nil {
			return err
		}
		ri := roleItem{name: r.Name}
		for _, p := range r.Permissions {
			ri.perms = append(ri.perms, permission{kind: p.Kind, prefix: string(p.Prefix), level: p.Level})
		}
		s.auth.roles.ReplaceOrInsert(ri)
	case recUser:
		f, err := parseFields(b)
		if err != nil {
			return err
		}
		var u kvpb.User
		if err := proto.Unmarshal(f.bytes[1], &u); err != nil {
			return err
		}
		s.auth.users.ReplaceOrInsert(userItem{name: u.Name, hash: f.bytes[2], roles: u.Roles, revision: u.Revision})
	case recBreak:
		f, err := parseFields(b)
		if err != nil {
			return err
		}
		lb := lastBreak{name: string(f.bytes[1]), token: f.varints[2], at: int64(f.varints[3]), reason: string(f.bytes[4]), index: f.varints[5]}
		s.lastBreaks[lb.name] = lb
	default:
		return fmt.Errorf("unknown record kind %d", kind)
	}
	return nil
}
