package api

import (
	"time"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Validation runs before anything is proposed. Every violation is an
// InvalidArgument naming the field and the limit (and the flag that sets it).

func (n *Server) checkKey(field string, key []byte) error {
	max := n.limits.MaxKeyBytes
	if len(key) == 0 {
		return invalid(field, int64(max), "%s: must not be empty", field)
	}
	return n.checkKeyLen(field, key)
}

// checkKeyLen allows an empty key (prefixes, continuations).
func (n *Server) checkKeyLen(field string, key []byte) error {
	max := n.limits.MaxKeyBytes
	if len(key) > max {
		return invalid(field, int64(max), "%s: %d bytes exceeds the limit of %d (--max-key-bytes)", field, len(key), max)
	}
	return nil
}

func (n *Server) checkValue(field string, v []byte) error {
	max := n.limits.MaxValueBytes
	if len(v) > max {
		return invalid(field, int64(max), "%s: %d bytes exceeds the limit of %d (--max-value-bytes)", field, len(v), max)
	}
	return nil
}

func (n *Server) checkName(field string, name []byte) error {
	max := n.limits.MaxNameBytes
	if len(name) == 0 {
		return invalid(field, int64(max), "%s: must not be empty", field)
	}
	return n.checkNameLen(field, len(name))
}

func (n *Server) checkNameLen(field string, l int) error {
	max := n.limits.MaxNameBytes
	if l > max {
		return invalid(field, int64(max), "%s: %d bytes exceeds the limit of %d (--max-name-bytes)", field, l, max)
	}
	return nil
}

// checkTTL accepts 0 (no TTL) unless required, else [MinTTL, MaxTTL].
func (n *Server) checkTTL(field string, ms int64, required bool) error {
	min, max := n.limits.MinTTL.Milliseconds(), n.limits.MaxTTL.Milliseconds()
	switch {
	case ms == 0 && !required:
		return nil
	case ms <= 0 && required:
		return invalid(field, min, "%s: required, at least %d (--min-ttl %v)", field, min, n.limits.MinTTL)
	case ms < 0:
		return invalid(field, 0, "%s: %d must not be negative", field, ms)
	case ms < min:
		return invalid(field, min, "%s: %d is below the minimum of %d (--min-ttl %v)", field, ms, min, n.limits.MinTTL)
	case ms > max:
		return invalid(field, max, "%s: %d exceeds the limit of %d (--max-ttl %v)", field, ms, max, n.limits.MaxTTL)
	}
	return nil
}

// checkDuration accepts [0, MaxTTL] milliseconds (waits, leases, windows).
func (n *Server) checkDuration(field string, ms int64) error {
	max := n.limits.MaxTTL.Milliseconds()
	if ms < 0 {
		return invalid(field, 0, "%s: %d must not be negative", field, ms)
	}
	if ms > max {
		return invalid(field, max, "%s: %d exceeds the limit of %d (--max-ttl %v)", field, ms, max, n.limits.MaxTTL)
	}
	return nil
}

func (n *Server) checkFence(f *kvpb.Fence) error {
	if f == nil {
		return nil
	}
	if err := n.checkName("fence.lock", f.GetLock()); err != nil {
		return err
	}
	if f.GetToken() == 0 {
		return invalid("fence.token", 0, "fence.token: must not be 0")
	}
	return nil
}

func (n *Server) checkSession(field string, h *kvpb.RequestHeader) error {
	if h.GetSession() == 0 {
		return invalid(field, 0, "%s: a session is required", field)
	}
	return nil
}

func (n *Server) checkHeader(h *kvpb.RequestHeader) error {
	if h.GetSeq() != 0 && h.GetSession() == 0 {
		return invalid("header.seq", 0, "header.seq: set without header.session")
	}
	return nil
}

func (n *Server) listLimit(field string, limit uint32) (int, error) {
	max := n.limits.MaxListLimit
	if int64(limit) > int64(max) {
		return 0, invalid(field, int64(max), "%s: %d exceeds the limit of %d (--max-list-limit)", field, limit, max)
	}
	if limit == 0 {
		return n.limits.DefaultListLimit, nil
	}
	return int(limit), nil
}

func msDuration(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }
