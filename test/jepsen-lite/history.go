package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Outcome of an operation, as Jepsen names them.
type Outcome string

const (
	// OK: the operation certainly happened, with the recorded result.
	OK Outcome = "ok"
	// Fail: the operation certainly did not take effect (or, for reads and
	// CAS, observed a definite "no": see Err).
	Fail Outcome = "fail"
	// Info: unknown: a timeout, ErrIndeterminate, lost leadership. It may
	// or may not have taken effect, at any time after its invocation.
	Info Outcome = "info"
	// pending: invoked, not completed yet (only while running).
	pending Outcome = ""
)

// Op is one operation of the history: its invocation and its completion.
// Times are nanoseconds since the run started (harness monotonic clock).
type Op struct {
	ID       int     `json:"id"`
	Client   int     `json:"client"`
	Workload string  `json:"workload"` // register, lock, election, ttl, memo, counter, bank, final
	Type     string  `json:"type"`     // read, write, cas, acquire, release, campaign, resign, proclaim, observe, leader, fenced-put, resource, put-ttl, list, fill, store, memoize, add, transfer, read-txn, read-list
	Key      string  `json:"key,omitempty"`
	Value    string  `json:"value,omitempty"` // written or read value
	Expected *uint64 `json:"expected,omitempty"`
	Invoke   int64   `json:"invoke"`
	Complete int64   `json:"complete"`
	Outcome  Outcome `json:"outcome"`
	Err      string  `json:"err,omitempty"`
	Code     string  `json:"code,omitempty"` // kvd error code of a failure

	// From the response's ResponseHeader.
	Index    uint64 `json:"index,omitempty"`
	LogTime  int64  `json:"log_time,omitempty"`
	ServedBy string `json:"served_by,omitempty"`
	Term     uint64 `json:"term,omitempty"`

	// Results, by workload.
	Found     bool   `json:"found,omitempty"`
	Version   uint64 `json:"version,omitempty"`
	Token     uint64 `json:"token,omitempty"`
	Session   uint64 `json:"session,omitempty"`
	ExpiresAt int64  `json:"expires_at,omitempty"` // log time
	HeldSince int64  `json:"held_since,omitempty"` // lock grant log time
	State     string `json:"state,omitempty"`      // cache state
	Filled    uint64 `json:"filled,omitempty"`     // cache entry filled_index
	Delta     int64  `json:"delta,omitempty"`
	Result    int64  `json:"result,omitempty"` // counter value
	TTLms     int64  `json:"ttl_ms,omitempty"`
	// Effect is the Raft index at which a write took effect, when the
	// answer says so (a put's kv.mod_index, a store's filled_index, a
	// release's next_token). Index is not that: a retried command gets
	// its first result again, served at the index of the retry.
	Effect uint64 `json:"effect,omitempty"`
	// Recipe: "mutex" for lock.Mutex operations (raw client.Session
	// otherwise), "pause-holder" for the holder the pause-holder fault
	// freezes.
	Recipe string `json:"recipe,omitempty"`
	// LockDelayMs is the lock-delay of a granted lock (its acquire's).
	LockDelayMs int64 `json:"lock_delay_ms,omitempty"`
	// LeaseLeftMs: at a session-end, how long the client's own view of the
	// lease still had to run (negative: it had run out).
	LeaseLeftMs int64 `json:"lease_left_ms,omitempty"`
	// Reason a session ended: "expired" (the server said so), "lost" (the
	// client's lease ran out first), "closed".
	Reason string `json:"reason,omitempty"`
	// Bound is the limit a hostile-client or memory op is judged against.
	Bound int64 `json:"bound,omitempty"`
	// CallInvoke: for a memoize fn run, when its memoize call was invoked.
	CallInvoke int64 `json:"call_invoke,omitempty"`
	// To: a bank transfer's credited account (Key is the debited one,
	// Delta the amount).
	To string `json:"to,omitempty"`
	// Accounts: the balances a bank read saw (or the init wrote), by
	// account key; an account the read did not find is absent.
	Accounts map[string]string `json:"accounts,omitempty"`
}

// History records operations from many goroutines.
type History struct {
	start time.Time

	mu  sync.Mutex
	ops []*Op
}

// NewHistory starts the clock of a history.
func NewHistory() *History { return &History{start: time.Now()} }

// Now is the history's clock: ns since start (monotonic).
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Invoke records the invocation of op and returns it; complete it with one
// of the Op methods below.
func (h *History) Invoke(op *Op) *Op {
	h.mu.Lock()
	op.ID = len(h.ops)
	op.Invoke = h.Now()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
	return op
}

// done completes op.
func (h *History) done(op *Op, out Outcome, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	op.Complete = h.Now()
	op.Outcome = out
	if err != nil {
		op.Err = err.Error()
		var ke *client.Error
		if errors.As(err, &ke) {
			op.Code = ke.Code.String()
		}
	}
}

// OK completes op successfully, with the response header hdr (may be nil).
func (h *History) OK(op *Op, hdr *kvpb.ResponseHeader) {
	setHeader(op, hdr)
	h.done(op, OK, nil)
}

// Fail completes op as certainly not applied (or a definite negative answer).
func (h *History) Fail(op *Op, err error) { h.done(op, Fail, err) }

// Info completes op with an unknown outcome.
func (h *History) Info(op *Op, err error) { h.done(op, Info, err) }

// Error completes op according to err: Info when err leaves the outcome
// unknown, Fail otherwise.
func (h *History) Error(op *Op, err error) {
	if Indeterminate(err) {
		h.Info(op, err)
		return
	}
	h.Fail(op, err)
}

func setHeader(op *Op, hdr *kvpb.ResponseHeader) {
	if hdr == nil {
		return
	}
	op.Index = hdr.GetAppliedIndex()
	op.LogTime = hdr.GetLogTime()
	op.ServedBy = hdr.GetServedBy()
	op.Term = hdr.GetTerm()
}

// Indeterminate reports whether err leaves a write's outcome unknown. Only
// answers the server gave (an *client.Error with a definite code) and
// ErrUnavailable (never sent to a leader) are definite; anything else
// (ErrIndeterminate, a context deadline, a transport error) is unknown.
func Indeterminate(err error) bool {
	var ke *client.Error
	if !errors.As(err, &ke) {
		return true
	}
	switch ke.Code {
	case kvpb.ErrorCode_ERROR_CODE_INDETERMINATE:
		return true
	case kvpb.ErrorCode_ERROR_CODE_NOT_LEADER:
		return false // ErrUnavailable: certainly not applied
	}
	return false
}

// Len is the number of operations invoked so far.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// Ops returns a copy of the operations, in invocation order. Operations
// still pending are returned as Info completing at the end.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.Now()
	out := make([]Op, len(h.ops))
	for i, op := range h.ops {
		out[i] = *op
		if out[i].Outcome == pending {
			out[i].Outcome = Info
			out[i].Err = "pending at end of run"
			out[i].Complete = now
		}
	}
	return out
}

// Write writes ops as JSON, one operation per line.
func WriteHistory(path string, ops []Op) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for i := range ops {
		if err := enc.Encode(&ops[i]); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadHistory reads a file written by WriteHistory.
func ReadHistory(path string) ([]Op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ops []Op
	dec := json.NewDecoder(bufio.NewReader(f))
	for dec.More() {
		var op Op
		if err := dec.Decode(&op); err != nil {
			return nil, fmt.Errorf("%s: op %d: %w", path, len(ops), err)
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// countOps counts operations by "workload/type" and outcome.
func countOps(ops []Op) map[string]map[Outcome]int {
	m := map[string]map[Outcome]int{}
	for _, op := range ops {
		k := op.Workload + "/" + op.Type
		if m[k] == nil {
			m[k] = map[Outcome]int{}
		}
		m[k][op.Outcome]++
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
