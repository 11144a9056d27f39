package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// ---------------------------------------------------------------------------
// -o json, the conventions of docs/kvctl.md, in one place:
//
//   - A command's object starts with "header", the response's header
//     (headerJSON). Only version, bench and snapshot status, which answer
//     from no single response, have none.
//   - A key, value or name that is valid UTF-8 is the string "key" / "value"
//     / "name"; one that is not is left out and given as base64 in
//     "key_base64" / "value_base64" / "name_base64" instead.
//   - An instant X in log time (the cluster's replicated clock) is four
//     fields: X_ns (unix nanoseconds), X (the same, RFC 3339 in UTC),
//     X_in_ms (from the header's log time to X: the time left, negative
//     once past) and X_wall (RFC 3339: the serving node's wall clock plus
//     X_in_ms, an estimate for people; log time runs behind the wall clock
//     after the whole cluster was down). An instant that is not set is
//     left out; with no header to measure against, only X_ns and X are given.
//   - A duration is a number of milliseconds in an X_ms field.

// object is one JSON object, its fields in the order they were set.
type object struct {
	keys []string
	vals []any
	h    *kvpb.ResponseHeader // what instants are measured against
}

// response starts the object of a command's answer: its header first.
func response(h *kvpb.ResponseHeader) *object {
	o := &object{h: h}
	return o.set("header", toHeaderJSON(h))
}

// part is an object inside a response, measured against its header h.
func part(h *kvpb.ResponseHeader) *object { return &object{h: h} }

func (o *object) set(k string, v any) *object {
	o.keys = append(o.keys, k)
	o.vals = append(o.vals, v)
	return o
}

// bytes sets k to b, or k_base64 when b is not UTF-8.
func (o *object) bytes(k string, b []byte) *object {
	s, b64 := bytesJSON(b)
	if b64 != "" {
		return o.set(k+"_base64", b64)
	}
	return o.set(k, s)
}

// bytesJSON applies the rule for bytes: (the text, "") when b is UTF-8,
// else ("", base64 of b).
func bytesJSON(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return "", base64.StdEncoding.EncodeToString(b)
}

// instant sets the four fields of log time t (unix ns); none when t is 0.
func (o *object) instant(k string, t int64) *object {
	if t == 0 {
		return o
	}
	o.set(k+"_ns", t).set(k, rfc3339(t))
	if o.h.GetLogTime() != 0 {
		left := time.Duration(t - o.h.GetLogTime())
		o.set(k+"_in_ms", left.Milliseconds())
		if w := o.h.GetWallTime(); w != 0 {
			o.set(k+"_wall", rfc3339(w+int64(left)))
		}
	}
	return o
}

func (o *object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		vb, err := json.Marshal(o.vals[i])
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", k, err)
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// headerJSON is the -o json form of a ResponseHeader.
type headerJSON struct {
	AppliedIndex uint64 `json:"applied_index"`
	LogTimeNs    int64  `json:"log_time_ns"`
	LogTime      string `json:"log_time"`
	WallTimeNs   int64  `json:"wall_time_ns,omitempty"`
	WallTime     string `json:"wall_time,omitempty"`
	ServedBy     string `json:"served_by"`
	Stale        bool   `json:"stale"`
	Term         uint64 `json:"term"`
}

func toHeaderJSON(h *kvpb.ResponseHeader) headerJSON {
	return headerJSON{
		AppliedIndex: h.GetAppliedIndex(),
		LogTimeNs:    h.GetLogTime(),
		LogTime:      rfc3339(h.GetLogTime()),
		WallTimeNs:   h.GetWallTime(),
		WallTime:     rfc3339(h.GetWallTime()),
		ServedBy:     h.GetServedBy(),
		Stale:        h.GetStale(),
		Term:         h.GetTerm(),
	}
}

func kvObject(kv *kvpb.KeyValue, h *kvpb.ResponseHeader) *object {
	return kvFields(part(h).bytes("key", kv.GetKey()).bytes("value", kv.GetValue()), kv)
}

// kvMetaObject is a key without its value (touch answers none).
func kvMetaObject(kv *kvpb.KeyValue, h *kvpb.ResponseHeader) *object {
	return kvFields(part(h).bytes("key", kv.GetKey()), kv)
}

// kvFields sets the fields of a key after its key and value: "session" only
// when the key is bound to one.
func kvFields(o *object, kv *kvpb.KeyValue) *object {
	o.set("version", kv.GetVersion()).
		set("create_index", kv.GetCreateIndex()).
		set("mod_index", kv.GetModIndex()).
		instant("expires_at", kv.GetExpiresAt())
	if kv.GetSession() != 0 {
		o.set("session", kv.GetSession())
	}
	return o
}

func sessionObject(s *kvpb.SessionInfo, h *kvpb.ResponseHeader) *object {
	locks := []*object{}
	for _, l := range s.GetLocks() {
		locks = append(locks, part(h).bytes("name", l))
	}
	o := part(h).set("id", s.GetId())
	if s.GetName() != "" {
		o.set("name", s.GetName())
	}
	return o.set("ttl_ms", s.GetTtlMs()).
		instant("expires_at", s.GetExpiresAt()).
		instant("created_at", s.GetCreatedAt()).
		set("locks", locks).
		set("keys", s.GetKeys())
}

func lockObject(li *kvpb.LockInfo, h *kvpb.ResponseHeader) *object {
	o := part(h).bytes("name", li.GetName()).
		set("token", li.GetToken()).
		set("session", li.GetSession()).
		instant("held_since", li.GetHeldSince()).
		instant("expires_at", li.GetExpiresAt())
	if li.GetValue() != nil {
		o.bytes("value", li.GetValue())
	}
	waiters := []*object{}
	for _, w := range li.GetWaiters() {
		waiters = append(waiters, part(h).set("session", w.GetSession()).
			instant("queued_at", w.GetQueuedAt()).
			instant("wait_until", w.GetWaitUntil()))
	}
	o.set("waiters", waiters)
	if li.GetLockDelayMs() != 0 {
		o.set("lock_delay_ms", li.GetLockDelayMs())
	}
	o.instant("delay_until", li.GetDelayUntil())
	if li.GetBrokenToken() != 0 {
		o.set("broken_token", li.GetBrokenToken()).instant("broken_at", li.GetBrokenAt())
		if li.GetBrokenReason() != "" {
			o.set("broken_reason", li.GetBrokenReason())
		}
	}
	return o
}

func membersJSON(ms []*kvpb.Member) []*object {
	out := []*object{}
	for _, m := range ms {
		out = append(out, memberObject(m))
	}
	return out
}

func memberObject(m *kvpb.Member) *object {
	return part(nil).set("name", m.GetName()).
		set("peer_addr", m.GetPeerAddr()).
		set("client_addr", m.GetClientAddr()).
		set("voter", m.GetVoter()).
		set("leader", m.GetLeader())
}

// rfc3339 formats unix nanoseconds as RFC 3339 with nanoseconds, UTC; ""
// for 0.
func rfc3339(t int64) string {
	if t == 0 {
		return ""
	}
	return time.Unix(0, t).UTC().Format(time.RFC3339Nano)
}

// ---------------------------------------------------------------------------
// Text output.

// when shows log time t for people, as of the response header h: the
// serving node's wall clock plus the time left (the same estimate as
// X_wall in JSON), then the time left itself:
// "2026-11-22T04:10:00.000Z (in 59.9s)".
func when(t int64, h *kvpb.ResponseHeader) string {
	if t == 0 {
		return "-"
	}
	now := h.GetLogTime()
	if now == 0 {
		return clock(t)
	}
	left := time.Duration(t - now)
	at := t
	if w := h.GetWallTime(); w != 0 {
		at = w + int64(left)
	}
	d := left.Round(time.Millisecond)
	switch {
	case d > 0:
		return fmt.Sprintf("%s (in %v)", clock(at), d)
	case d < 0:
		return fmt.Sprintf("%s (%v ago)", clock(at), -d)
	}
	return clock(at) + " (now)"
}

// clock formats unix nanoseconds to the millisecond, UTC.
func clock(t int64) string {
	return time.Unix(0, t).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// printable renders bytes for a human: as they are when they are printable
// UTF-8 text, Go-quoted otherwise.
func printable(b []byte) string {
	s := string(b)
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			return strconv.Quote(s)
		}
	}
	return s
}
