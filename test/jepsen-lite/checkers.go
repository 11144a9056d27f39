package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Verdict is one checker's result.
type Verdict struct {
	Name     string         `json:"name"`
	Pass     bool           `json:"pass"`
	Counts   map[string]int `json:"counts"`
	Problems []string       `json:"problems,omitempty"` // violations (first maxProblems)
	Notes    []string       `json:"notes,omitempty"`    // reported, not failed on
	Files    []string       `json:"files,omitempty"`    // e.g. porcupine visualizations
}

const maxProblems = 25

func newVerdict(name string) *Verdict {
	return &Verdict{Name: name, Pass: true, Counts: map[string]int{}}
}

func (v *Verdict) fail(format string, args ...any) {
	v.Pass = false
	v.Counts["violations"]++
	if len(v.Problems) < maxProblems {
		v.Problems = append(v.Problems, fmt.Sprintf(format, args...))
	}
}

func (v *Verdict) note(format string, args ...any) {
	v.Counts["notes"]++
	if len(v.Notes) < maxProblems {
		v.Notes = append(v.Notes, fmt.Sprintf(format, args...))
	}
}

func byKey(ops []Op, pred func(*Op) bool) map[string][]*Op {
	m := map[string][]*Op{}
	for i := range ops {
		if pred(&ops[i]) {
			m[ops[i].Key] = append(m[ops[i].Key], &ops[i])
		}
	}
	return m
}

func maxTime(ops []Op) int64 {
	var t int64
	for _, op := range ops {
		t = max(t, op.Complete, op.Invoke)
	}
	return t
}

// ---------------------------------------------------------------------------
// Register linearizability (porcupine, per key).

type regInput struct {
	Kind     string // read, write, cas
	Value    string
	Expected uint64
}

type regOutput struct {
	Unknown   bool
	CASFailed bool
	Found     bool
	Value     string
	Version   uint64
}

type regState struct {
	Exists bool
	Value  string
	Ver    uint64
}

var registerModel = porcupine.Model{
	Init: func() any { return regState{} },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(regState), input.(regInput), output.(regOutput)
		next := regState{Exists: true, Value: in.Value, Ver: st.Ver + 1}
		switch in.Kind {
		case "read":
			if out.Found != st.Exists {
				return false, st
			}
			return !out.Found || (out.Value == st.Value && out.Version == st.Ver), st
		case "write":
			if out.Unknown {
				return true, next
			}
			return out.Version == next.Ver, next
		case "cas":
			match := st.Ver == in.Expected
			switch {
			case out.CASFailed:
				return !match, st
			case out.Unknown:
				if match {
					return true, next
				}
				return true, st
			}
			return match && out.Version == next.Ver, next
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		res := fmt.Sprintf("%q v%d", out.Value, out.Version)
		switch {
		case out.Unknown:
			res = "?"
		case out.CASFailed:
			res = "mismatch"
		case in.Kind == "read" && !out.Found:
			res = "absent"
		}
		switch in.Kind {
		case "read":
			return "get -> " + res
		case "cas":
			return fmt.Sprintf("cas(v%d, %q) -> %s", in.Expected, in.Value, res)
		}
		return fmt.Sprintf("put(%q) -> %s", in.Value, res)
	},
	DescribeState: func(state any) string {
		st := state.(regState)
		if !st.Exists {
			return "absent"
		}
		return fmt.Sprintf("%q v%d", st.Value, st.Ver)
	},
}

// registerOps turns the register history (and the final reads) into
// porcupine operations by key. Unknown writes complete at "infinity".
func registerOps(ops []Op) map[string][]porcupine.Operation {
	inf := maxTime(ops) + int64(time.Hour)
	m := map[string][]porcupine.Operation{}
	for _, op := range ops {
		if !strings.HasPrefix(op.Key, "reg/") || (op.Workload != "register" && op.Workload != "final") {
			continue
		}
		in := regInput{Kind: op.Type, Value: op.Value}
		if op.Expected != nil {
			in.Expected = *op.Expected
		}
		out := regOutput{Found: op.Found, Value: op.Value, Version: op.Version}
		ret := op.Complete
		switch {
		case op.Outcome == OK:
		case op.Type == "read":
			continue // a failed read observed nothing
		case op.Outcome == Info:
			out, ret = regOutput{Unknown: true}, inf
		case op.Type == "cas" && op.Code == kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH.String():
			out = regOutput{CASFailed: true}
		default:
			continue // certainly not applied
		}
		if in.Kind == "read" && !out.Found {
			out.Value = ""
		}
		m[op.Key] = append(m[op.Key], porcupine.Operation{ClientId: op.Client, Input: in, Call: op.Invoke, Output: out, Return: ret})
	}
	return m
}

// CheckRegister checks each key's history for linearizability; a key
// whose check times out fails. Visualizations of failing keys go to dir.
func CheckRegister(ops []Op, perKey time.Duration, dir string) *Verdict {
	v := newVerdict("linearizable-register")
	byKey := registerOps(ops)
	keys := sortedKeys(byKey)
	type res struct {
		key    string
		result porcupine.CheckResult
		info   porcupine.LinearizationInfo
	}
	results := make([]res, len(keys))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for i, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, k string) {
			defer wg.Done()
			defer func() { <-sem }()
			r, info := porcupine.CheckOperationsVerbose(registerModel, byKey[k], perKey)
			results[i] = res{k, r, info}
		}(i, k)
	}
	wg.Wait()
	for _, r := range results {
		v.Counts["keys"]++
		v.Counts["ops"] += len(byKey[r.key])
		switch r.result {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			v.Counts["timeouts"]++
			v.fail("key %s: check timed out after %v (counts as a failure)", r.key, perKey)
		case porcupine.Illegal:
			v.fail("key %s: not linearizable", r.key)
		}
		if dir != "" {
			path := filepath.Join(dir, "linearizability-"+strings.ReplaceAll(r.key, "/", "_")+".html")
			if err := porcupine.VisualizePath(registerModel, r.info, path); err == nil {
				v.Files = append(v.Files, path)
			}
		}
	}
	return v
}

// ---------------------------------------------------------------------------
// Locks.

// CheckLocks checks grants, fenced writes and the outside resource.
func CheckLocks(ops []Op) *Verdict {
	v := newVerdict("lock")
	checkGrants(v, ops, lockGrantOps)
	return v
}

// grantOps names the operations of a workload built on locks: the lock
// workload's acquire and release, an election's campaign and resign. Both
// record the same fenced-put, resource, cancel-wait, close-session and
// session-end operations.
type grantOps struct {
	workload, acquire, release string
}

var (
	lockGrantOps     = grantOps{workload: "lock", acquire: "acquire", release: "release"}
	electionGrantOps = grantOps{workload: "election", acquire: "campaign", release: "resign"}
)

// checkGrants checks one lock-based workload's grants, fenced writes and
// its use of the outside resource, into v. A grant whose lock state (log
// time of the grant, the session's deadline) was not read is judged on
// what does not need it.
func checkGrants(v *Verdict, ops []Op, g0 grantOps) {
	end := maxTime(ops)
	grants := byKey(ops, func(op *Op) bool {
		return op.Workload == g0.workload && op.Type == g0.acquire && op.Outcome == OK && op.Token > 0
	})
	// Ops that end a session's hold voluntarily, by session.
	enders := map[uint64][]*Op{}
	sessionEnd := map[uint64]int64{}
	for i := range ops {
		op := &ops[i]
		if op.Workload != g0.workload {
			continue
		}
		switch op.Type {
		case g0.release, "cancel-wait", "close-session":
			enders[op.Session] = append(enders[op.Session], op)
		case "session-end":
			sessionEnd[op.Session] = op.Invoke
		}
	}
	byToken := func(typ string) map[string]map[uint64][]*Op {
		m := map[string]map[uint64][]*Op{}
		for i := range ops {
			op := &ops[i]
			if op.Workload == g0.workload && op.Type == typ && op.Outcome == OK {
				if m[op.Key] == nil {
					m[op.Key] = map[uint64][]*Op{}
				}
				m[op.Key][op.Token] = append(m[op.Key][op.Token], op)
			}
		}
		return m
	}
	puts, releases, resource := byToken("fenced-put"), byToken(g0.release), byToken("resource")
	for _, name := range sortedKeys(grants) {
		gs := grants[name]
		sort.Slice(gs, func(i, j int) bool { return gs[i].Token < gs[j].Token })
		// One grant per token.
		var uniq []*Op
		for _, g := range gs {
			if len(uniq) > 0 && uniq[len(uniq)-1].Token == g.Token {
				if uniq[len(uniq)-1].Session != g.Session {
					v.fail("%s %s: token %d granted to sessions %d and %d", g0.workload, name, g.Token, uniq[len(uniq)-1].Session, g.Session)
				}
				continue
			}
			uniq = append(uniq, g)
		}
		v.Counts["grants"] += len(uniq)
		for i, g := range uniq {
			if g.Index > 0 && g.Token > g.Index {
				// The header understates the state that served the grant
				// (a known api quirk for waiters): reported, not failed on.
				v.Counts["header-index-below-token"]++
				v.note("%s %s: acquire answer's header index %d is below its token %d (the granting entry)", g0.workload, name, g.Index, g.Token)
			}
			if i == 0 {
				continue
			}
			p := uniq[i-1]
			known := g.HeldSince > 0 && p.HeldSince > 0
			if !known {
				v.Counts["grants-without-lock-state"]++
			}
			if known && g.HeldSince < p.HeldSince {
				v.fail("%s %s: token %d granted at log time %d, before token %d (%d): tokens not increasing in grant order", g0.workload, name, g.Token, g.HeldSince, p.Token, p.HeldSince)
			}
			for _, w := range puts[name][p.Token] {
				if w.Effect > g.Token {
					v.fail("%s %s: fenced put with token %d applied at index %d, after token %d was granted (store accepted a stale token)", g0.workload, name, p.Token, w.Effect, g.Token)
				}
			}
			for _, r := range releases[name][p.Token] {
				// Effect: the index of a release that handed the lock to a
				// waiter (its next_token). Releases that granted nobody do
				// not say where they applied (a retry's header is the
				// retry's index), so they are not judged here.
				if r.Effect > g.Token {
					v.fail("%s %s: grants overlap in log order: token %d released at index %d, after token %d was granted", g0.workload, name, p.Token, r.Effect, g.Token)
				}
			}
			for _, r := range resource[name][p.Token] {
				if r.Index >= g.Token {
					v.fail("%s %s: CheckFence said token %d is valid at index %d, after token %d was granted (resource accepted a stale token)", g0.workload, name, p.Token, r.Index, g.Token)
				}
			}
			// The previous holder's session deadline (as of its grant) had
			// not passed: the lock could only change hands if it was given
			// up. Given up involuntarily (its session expired), the lock
			// also kept its lock-delay after that deadline (the deadline
			// can only have moved later since).
			delay := p.LockDelayMs * int64(time.Millisecond)
			if known && p.Session != g.Session && g.HeldSince < p.ExpiresAt+delay {
				given := false
				for _, e := range enders[p.Session] {
					if e.Invoke <= g.Complete && (e.Type == "close-session" || e.Key == name) {
						given = true
					}
				}
				switch {
				case given:
				case g.HeldSince < p.ExpiresAt:
					v.fail("%s %s: token %d granted at log time %d, before holder of token %d (session %d) expired at %d and without a release", g0.workload, name, g.Token, g.HeldSince, p.Token, p.Session, p.ExpiresAt)
				default:
					v.fail("%s %s: token %d granted at log time %d, %v after holder of token %d (session %d) expired at %d: inside its lock-delay of %v", g0.workload, name, g.Token, g.HeldSince, time.Duration(g.HeldSince-p.ExpiresAt), p.Token, p.Session, p.ExpiresAt, time.Duration(delay))
				}
			}
			if delay > 0 {
				v.Counts["grants-after-a-lock-delay-grant"]++
			}
		}
		// Wall-clock overlaps of believed holders (reported only).
		type iv struct {
			tok        uint64
			start, end int64
		}
		var ivs []iv
		for _, g := range uniq {
			if se, ok := sessionEnd[g.Session]; ok && se <= g.Complete {
				// The client's view of the session had ended before the
				// grant was returned: a careful holder does not use it.
				recipe := "client.Session.Acquire"
				switch g.Recipe {
				case "mutex":
					recipe = "lock.Mutex.Lock"
				case "election":
					recipe = "election.Campaign"
				}
				v.Counts["grants-returned-after-session-end"]++
				v.Counts["grants-returned-after-session-end/"+recipe]++
				v.note("%s %s: %s returned token %d to session %d %v after the client's view of that session ended", g0.workload, name, recipe, g.Token, g.Session, time.Duration(g.Complete-se))
				continue
			}
			e := end
			for _, r := range enders[g.Session] {
				if r.Invoke >= g.Complete && (r.Key == name || r.Type == "close-session") {
					e = min(e, r.Invoke)
				}
			}
			if se, ok := sessionEnd[g.Session]; ok && se >= g.Complete {
				e = min(e, se)
			}
			ivs = append(ivs, iv{g.Token, g.Complete, e})
		}
		for i := range ivs {
			for j := i + 1; j < len(ivs); j++ {
				if ivs[i].start < ivs[j].end && ivs[j].start < ivs[i].end {
					v.Counts["wall-clock-overlaps"]++
					v.note("%s %s: holders of tokens %d and %d both believed they held it for %v", g0.workload, name, ivs[i].tok, ivs[j].tok, time.Duration(min(ivs[i].end, ivs[j].end)-max(ivs[i].start, ivs[j].start)))
				}
			}
		}
	}
	// The resource itself: accepted tokens never decrease.
	for _, name := range sortedKeys(resource) {
		var acc []*Op
		for _, l := range resource[name] {
			acc = append(acc, l...)
		}
		sort.Slice(acc, func(i, j int) bool { return acc[i].Complete < acc[j].Complete })
		for i := 1; i < len(acc); i++ {
			if acc[i].Token < acc[i-1].Token {
				v.fail("resource %s accepted token %d after %d", name, acc[i].Token, acc[i-1].Token)
			}
		}
		v.Counts["resource-accepted"] += len(acc)
	}
	for _, op := range ops {
		if op.Workload != g0.workload {
			continue
		}
		switch {
		case op.Type == "fenced-put" && op.Outcome == OK:
			v.Counts["fenced-puts-accepted"]++
		case op.Type == "fenced-put" && op.Code == kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED.String():
			v.Counts["fenced-puts-rejected"]++
		case op.Type == "resource" && op.Outcome != OK:
			v.Counts["resource-rejected"]++
		}
	}
}

// ---------------------------------------------------------------------------
// TTL.

// CheckTTL checks that no key expired before its log-time deadline, and
// that a linearizable read whose log time is past the deadline does not
// see the key.
func CheckTTL(ops []Op) *Verdict {
	v := newVerdict("ttl")
	puts := map[string]*Op{}
	for i := range ops {
		if op := &ops[i]; op.Workload == "ttl" && op.Type == "put-ttl" && op.Outcome == OK {
			puts[op.Key] = op
		}
	}
	// Unknown puts too, for the real-time bound: an absent key proves
	// nothing about them, a present one does.
	invoked := map[string]*Op{}
	for i := range ops {
		if op := &ops[i]; op.Workload == "ttl" && op.Type == "put-ttl" && invoked[op.Key] == nil {
			invoked[op.Key] = op
		}
	}
	for _, op := range ops {
		if op.Workload != "ttl" || op.Type != "list" || op.Outcome != OK {
			continue
		}
		// Judged against the client's own clock: log time never runs
		// faster than real time, and the put was stamped after it was
		// invoked, so a key cannot be gone at a read that completed
		// before the put's invocation + TTL. This catches a server whose
		// log time runs fast, or whose deadline it reports and keeps are
		// both early: neither shows against the server's own log time.
		if p := invoked[op.Key]; p != nil && !op.Found && p.Outcome == OK && op.Complete < p.Invoke+p.TTLms*int64(time.Millisecond)-ttlClockSlack {
			v.fail("key %s absent at a read that completed %v after the put was invoked, before its TTL of %v had passed in real time",
				op.Key, time.Duration(op.Complete-p.Invoke), time.Duration(p.TTLms)*time.Millisecond)
		}
		p := puts[op.Key]
		if p == nil || op.Invoke < p.Complete {
			continue
		}
		v.Counts["reads"]++
		if op.Found && op.ExpiresAt != p.ExpiresAt {
			// A new leader moves deadlines that fell due while there was
			// no leader to now + grace (docs/design.md, Time): later, never earlier.
			if op.ExpiresAt < p.ExpiresAt {
				v.fail("key %s: deadline moved earlier, from %d to %d", op.Key, p.ExpiresAt, op.ExpiresAt)
			} else {
				v.Counts["deadlines-moved-by-recover"]++
			}
		}
		deadline := max(p.ExpiresAt, op.ExpiresAt)
		switch {
		case !op.Found && op.LogTime < p.ExpiresAt:
			v.fail("key %s expired early: absent at log time %d, deadline %d (%v early)",
				op.Key, op.LogTime, p.ExpiresAt, time.Duration(p.ExpiresAt-op.LogTime))
		case op.Found && op.LogTime >= deadline:
			v.fail("key %s still present at log time %d, past its deadline %d by %v",
				op.Key, op.LogTime, deadline, time.Duration(op.LogTime-deadline))
		case op.Found:
			v.Counts["present-before-deadline"]++
		default:
			v.Counts["absent-after-deadline"]++
		}
	}
	v.Counts["keys"] = len(puts)
	return v
}

// ttlClockSlack covers the granularity of the harness's and kvd's clocks
// in the real-time TTL and lease checks.
const ttlClockSlack = 2 * int64(time.Millisecond)

// ---------------------------------------------------------------------------
// Session leases.

// CheckSessionLeases: the server never expires a session while the
// client's own view of its lease still runs. The client's Deadline is the
// send time of its last acknowledged keepalive + TTL - margin; the server's
// is the log time at which it applied that keepalive + TTL, and log time
// runs no faster than real time. So a session the server says is expired
// (SESSION_EXPIRED) while the client's Deadline is still ahead expired
// early, judged by the client's own clock.
func CheckSessionLeases(ops []Op) *Verdict {
	v := newVerdict("session-lease")
	for _, op := range ops {
		if op.Type != "session-end" {
			continue
		}
		v.Counts["ended-"+op.Reason]++
		if op.Reason == "expired" && op.LeaseLeftMs*int64(time.Millisecond) > sessionSlack {
			v.fail("%s session %d: the server said it expired while the client's lease had %v left",
				op.Workload, op.Session, time.Duration(op.LeaseLeftMs)*time.Millisecond)
		}
	}
	return v
}

// sessionSlack: how long after a session's Done the harness may observe it.
const sessionSlack = 50 * int64(time.Millisecond)

// ---------------------------------------------------------------------------
// Memoize.

// tokenOfValue extracts the lease token a raw memo value was stored with.
func tokenOfValue(val string) (uint64, bool) {
	i := strings.LastIndex(val, "-t")
	if i < 0 {
		return 0, false
	}
	t, err := strconv.ParseUint(val[i+2:], 10, 64)
	return t, err == nil
}

// CheckMemo checks fill leases and stored values.
func CheckMemo(ops []Op) *Verdict {
	v := newVerdict("memoize")
	grants := byKey(ops, func(op *Op) bool {
		return op.Workload == "memo" && op.Type == "fill" && op.Outcome == OK && op.Token > 0
	})
	stores := byKey(ops, func(op *Op) bool { return op.Workload == "memo" && op.Type == "store" })
	sessionEnd := map[uint64]int64{}
	for _, op := range ops {
		if op.Workload == "memo" && op.Type == "session-end" {
			sessionEnd[op.Session] = op.Invoke
		}
	}
	storedValues := map[string]*Op{}
	for _, l := range stores {
		for _, s := range l {
			if s.Outcome != Fail {
				storedValues[s.Value] = s
			}
		}
	}
	tokens := map[string][]uint64{}
	for _, key := range sortedKeys(grants) {
		gs := grants[key]
		sort.Slice(gs, func(i, j int) bool { return gs[i].Token < gs[j].Token })
		var uniq []*Op
		for _, g := range gs {
			if len(uniq) > 0 && uniq[len(uniq)-1].Token == g.Token {
				if uniq[len(uniq)-1].Session != g.Session {
					v.fail("cache %s: lease token %d granted to sessions %d and %d", key, g.Token, uniq[len(uniq)-1].Session, g.Session)
				}
				continue
			}
			uniq = append(uniq, g)
			tokens[key] = append(tokens[key], g.Token)
		}
		v.Counts["leases"] += len(uniq)
		for i := 1; i < len(uniq); i++ {
			p, g := uniq[i-1], uniq[i]
			if g.LogTime >= p.ExpiresAt || p.Session == g.Session {
				continue
			}
			ended := false
			for _, s := range stores[key] {
				if s.Token == p.Token && s.Invoke <= g.Complete {
					ended = true
				}
			}
			if se, ok := sessionEnd[p.Session]; ok && se <= g.Complete {
				ended = true
			}
			if !ended {
				v.fail("cache %s: lease %d granted at log time %d while lease %d was live until %d and not given up",
					key, g.Token, g.LogTime, p.Token, p.ExpiresAt)
			}
		}
	}
	// A newer lease granted between t and index i.
	newer := func(key string, t, i uint64) uint64 {
		for _, g := range tokens[key] {
			if g > t && g <= i {
				return g
			}
		}
		return 0
	}
	for _, key := range sortedKeys(stores) {
		for _, s := range stores[key] {
			switch s.Outcome {
			case OK:
				v.Counts["stores-accepted"]++
				if g := newer(key, s.Token, s.Effect); g != 0 {
					v.fail("cache %s: store under lease %d accepted at index %d, after lease %d was granted", key, s.Token, s.Effect, g)
				}
			case Fail:
				v.Counts["stores-rejected"]++
			default:
				v.Counts["stores-unknown"]++
			}
		}
	}
	for _, op := range ops {
		if op.Workload != "memo" || op.Outcome != OK {
			continue
		}
		switch op.Type {
		case "fill":
			if op.State != "FRESH" && op.State != "STALE" || op.Value == "" {
				continue
			}
			v.Counts["values-read"]++
			s := storedValues[op.Value]
			if s == nil {
				v.fail("cache %s: read value %q that no accepted store wrote", op.Key, op.Value)
				continue
			}
			if t, ok := tokenOfValue(op.Value); ok && op.Filled > 0 {
				if g := newer(op.Key, t, op.Filled-1); g != 0 {
					v.fail("cache %s: value of lease %d stored at index %d, after lease %d was granted", op.Key, t, op.Filled, g)
				}
			}
		case "memoize":
			v.Counts["memoize-ok"]++
			if !op.Found {
				v.fail("memoize %s: caller got %q, which no fn computed", op.Key, op.Value)
			}
		}
	}
	checkComputeRuns(v, ops)
	for _, op := range ops {
		if op.Workload == "memo" && op.Type == "memoize" && op.Outcome != OK {
			v.Counts["memoize-errors"]++
			if !isAvailabilityError(op) {
				v.fail("memoize %s: caller got no value: %s", op.Key, op.Err)
			}
		}
	}
	return v
}

// checkComputeRuns counts how many times memoize's fn ran per key, and
// fails when two runs for one key were running at the same moment, each
// certainly under a live fill lease: single flight means one lease, one
// run. A
// run's lease was granted before the run started (the Fill that granted it
// returned first) and lasts fillLease of log time, which runs no faster
// than real time. It was granted after its memoize call was invoked, or
// after an earlier call of the same client on the same key that gave up
// (its flight was cancelled when its caller left, and the lease stayed
// with the client's session: the server answers a Fill of the session
// that holds a live lease with that same lease). So it was certainly live
// from the run's start until the earliest such invocation + fillLease. (A
// run that outlived its lease may be overlapped by the lease's next
// holder: that is legitimate, and not flagged.)
// grantSlack bounds how long after a memoize call gave up a Fill it sent
// may still be applied, for checkComputeRuns (the faults delay links by at
// most about a second).
const grantSlack = 3 * time.Second

func checkComputeRuns(v *Verdict, ops []Op) {
	runs := byKey(ops, func(op *Op) bool { return op.Workload == "memo" && op.Type == "compute" })
	calls := map[string]int{}
	// Each client's memoize calls per key, in invocation order.
	type clientKey struct {
		client int
		key    string
	}
	byClient := map[clientKey][]*Op{}
	for i := range ops {
		op := &ops[i]
		if op.Workload == "memo" && op.Type == "memoize" {
			calls[op.Key]++
			ck := clientKey{op.Client, op.Key}
			byClient[ck] = append(byClient[ck], op)
		}
	}
	// grantedAfter is the earliest time the lease a run computed under may
	// have been granted: its call's invocation, or that of the earlier
	// calls of the same client on the key that gave up (no value) while a
	// lease they may have taken could still live at the next call. A Fill
	// sent before a call gave up may apply after it (a delayed link), so
	// "could still live" allows grantSlack beyond the call's end.
	grantedAfter := func(r *Op) int64 {
		cs := byClient[clientKey{r.Client, r.Key}]
		i := sort.Search(len(cs), func(i int) bool { return cs[i].Invoke >= r.CallInvoke })
		at := r.CallInvoke
		for i--; i >= 0; i-- {
			c := cs[i]
			if c.Outcome == OK || c.Complete+int64(grantSlack+fillLease) < at {
				break
			}
			at = c.Invoke
		}
		return at
	}
	for _, key := range sortedKeys(runs) {
		rs := runs[key]
		v.Counts["fn-runs"] += len(rs)
		v.Counts["memoize-calls"] += calls[key]
		// While it ran and its lease certainly lived.
		live := func(r *Op) (int64, int64) {
			return r.Invoke, min(r.Complete, grantedAfter(r)+int64(fillLease)-ttlClockSlack)
		}
		for i := range rs {
			for j := i + 1; j < len(rs); j++ {
				a0, a1 := live(rs[i])
				b0, b1 := live(rs[j])
				if max(a0, b0) < min(a1, b1) {
					v.fail("memoize %s: fn ran twice under live leases at once (%q and %q, both certainly leased for %v): the fill lease was not single",
						key, rs[i].Value, rs[j].Value, time.Duration(min(a1, b1)-max(a0, b0)))
				}
			}
		}
	}
}

// isAvailabilityError: the op failed for want of a cluster (timeouts, no
// leader, unknown outcome) or was refused for load (a cap reached, as in a
// session flood), not with a wrong answer.
func isAvailabilityError(op Op) bool {
	switch op.Code {
	case "", kvpb.ErrorCode_ERROR_CODE_NOT_LEADER.String(), kvpb.ErrorCode_ERROR_CODE_INDETERMINATE.String(),
		kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED.String(), kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED.String(),
		// The disk-full fault: a member refuses writes that add data (a
		// fill lease, a store) while its data dir is full.
		kvpb.ErrorCode_ERROR_CODE_DISK_FULL.String(), kvpb.ErrorCode_ERROR_CODE_QUOTA_EXCEEDED.String():
		return true
	}
	return false
}

// ---------------------------------------------------------------------------
// Counters.

// CheckCounters: each counter's final value is the acknowledged increments
// plus at most the unknown ones; acknowledged results are distinct.
func CheckCounters(ops []Op) *Verdict {
	v := newVerdict("exactly-once-counter")
	type agg struct {
		acked, unknown int64
		final          *Op
		results        map[int64]int
	}
	m := map[string]*agg{}
	get := func(k string) *agg {
		if m[k] == nil {
			m[k] = &agg{results: map[int64]int{}}
		}
		return m[k]
	}
	for i := range ops {
		op := &ops[i]
		switch {
		case op.Workload == "counter" && op.Type == "add":
			a := get(op.Key)
			switch op.Outcome {
			case OK:
				a.acked += op.Delta
				a.results[op.Result]++
			case Info:
				a.unknown += op.Delta
			}
		case op.Workload == "final" && op.Type == "read-counter" && op.Outcome == OK:
			get(op.Key).final = op
		}
	}
	for _, k := range sortedKeys(m) {
		a := m[k]
		v.Counts["acked"] += int(a.acked)
		v.Counts["unknown"] += int(a.unknown)
		for r, n := range a.results {
			if n > 1 {
				v.fail("counter %s: %d acknowledged increments both returned %d", k, n, r)
			}
		}
		if a.final == nil {
			v.fail("counter %s: no final read", k)
			continue
		}
		got := a.final.Result
		if got < a.acked || got > a.acked+a.unknown {
			v.fail("counter %s = %d, want between %d acknowledged and %d (+%d unknown)", k, got, a.acked, a.acked+a.unknown, a.unknown)
		}
	}
	return v
}

// ---------------------------------------------------------------------------
// Durability.

// CheckDurability: after the final kill-all and restart, every register key
// with an acknowledged write is readable, present, and holds a value no
// acknowledged write invoked after it completed has overwritten.
func CheckDurability(ops []Op) *Verdict {
	v := newVerdict("durability")
	writes := map[string][]*Op{}
	byValue := map[string]*Op{}
	finals := map[string]*Op{}
	for i := range ops {
		op := &ops[i]
		if !strings.HasPrefix(op.Key, "reg/") {
			continue
		}
		switch {
		case op.Workload == "register" && (op.Type == "write" || op.Type == "cas") && op.Outcome != Fail:
			writes[op.Key] = append(writes[op.Key], op)
			byValue[op.Value] = op
		case op.Workload == "final" && op.Type == "read":
			finals[op.Key] = op
		}
	}
	for _, k := range sortedKeys(writes) {
		var acked []*Op
		for _, w := range writes[k] {
			if w.Outcome == OK {
				acked = append(acked, w)
			}
		}
		if len(acked) == 0 {
			continue
		}
		v.Counts["keys"]++
		f := finals[k]
		switch {
		case f == nil || f.Outcome != OK:
			v.fail("key %s: not readable after the final restart", k)
			continue
		case !f.Found:
			v.fail("key %s: acknowledged writes lost: absent after the final restart", k)
			continue
		}
		w := byValue[f.Value]
		if w == nil || w.Key != k {
			v.fail("key %s: final value %q was never written", k, f.Value)
			continue
		}
		if w.Outcome != OK {
			continue // an unknown write: it completes "at infinity"
		}
		for _, a := range acked {
			if a.Invoke > w.Complete {
				v.fail("key %s: acknowledged write %q (invoked after %q was acknowledged) lost: final value %q",
					k, a.Value, w.Value, f.Value)
				break
			}
		}
	}
	return v
}

// ---------------------------------------------------------------------------
// Convergence.

// NodeState is one node's status at the end.
type NodeState struct {
	Name      string `json:"name"`
	Applied   uint64 `json:"applied"`
	StateHash string `json:"state_hash"`
	Err       string `json:"err,omitempty"`
}

// CheckConvergence: every node reported the same state hash at the same
// applied index.
func CheckConvergence(states []NodeState, tries int) *Verdict {
	v := newVerdict("convergence")
	v.Counts["nodes"] = len(states)
	v.Counts["tries"] = tries
	for _, s := range states {
		if s.Err != "" {
			v.fail("node %s: %s", s.Name, s.Err)
		}
	}
	for i := 1; i < len(states) && v.Pass; i++ {
		a, b := states[0], states[i]
		if a.Applied != b.Applied || a.StateHash != b.StateHash {
			v.fail("nodes %s (index %d hash %s) and %s (index %d hash %s) differ", a.Name, a.Applied, a.StateHash, b.Name, b.Applied, b.StateHash)
		}
	}
	return v
}

// writeFileIf writes b to path unless dir is empty.
func writeFileIf(dir, name string, b []byte) error {
	if dir == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, name), b, 0o644)
}

// ---------------------------------------------------------------------------
// Hostile clients and memory.

// CheckHostile judges what the hostile-client fault saw: a reused
// sequence number with another body refused with SEQUENCE_REUSED and its
// key never written; every List page within the response budget, and the
// pages together holding every key; a connection that reads nothing
// getting no more answers built than its unread budget holds; a session
// flood refused only with RESOURCE_EXHAUSTED (or unavailability).
func CheckHostile(ops []Op) *Verdict {
	v := newVerdict("hostile-client")
	for _, op := range ops {
		if op.Workload != "hostile" || op.Outcome != OK {
			continue
		}
		v.Counts[op.Type]++
		switch op.Type {
		case "seq-reuse":
			if op.Code != kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED.String() {
				v.fail("%s: a reused seq with another body was answered %s, want SEQUENCE_REUSED", op.Key, op.Code)
			}
			if op.Found {
				v.fail("%s: the refused command's key was written", op.Key)
			}
		case "huge-list":
			if op.Result > op.Bound+4096 {
				v.fail("List %s: a page of %d bytes, over the %d byte budget", op.Key, op.Result, op.Bound)
			}
			if int64(op.Version) != op.Delta {
				v.fail("List %s: following the pages gave %d keys, want %d", op.Key, op.Version, op.Delta)
			}
		case "unread":
			v.Counts["unread-answers-built"] = max(v.Counts["unread-answers-built"], int(op.Version))
			if int64(op.Version) > op.Bound {
				v.fail("node %s built %d answers for a connection that reads none, want at most %d (--max-unread-bytes): %s", op.Key, op.Version, op.Bound, op.Value)
			}
		case "session-flood":
			v.Counts["flood-created"] += int(op.Version)
			v.Counts["flood-refused"] += int(op.Delta)
			if op.Code != "" {
				v.fail("session flood: a creation failed with %s (%s), want only RESOURCE_EXHAUSTED or unavailability", op.Code, op.Err)
			}
			if op.Delta == 0 && int64(op.Version) > op.Bound {
				v.fail("session flood: %d sessions created and none refused, over --max-sessions %d", op.Version, op.Bound)
			}
		}
	}
	return v
}

// CheckMemory: no node's resident memory, sampled every second through
// the run, went over the bound.
func CheckMemory(ops []Op) *Verdict {
	v := newVerdict("memory")
	peak := map[string]int64{}
	for _, op := range ops {
		if op.Workload != "memory" || op.Type != "rss" || op.Outcome != OK {
			continue
		}
		v.Counts["samples"]++
		if op.Result > peak[op.Key] {
			peak[op.Key] = op.Result
			if op.Bound > 0 && op.Result > op.Bound {
				v.fail("node %s: RSS %d MiB at %v, over the bound of %d MiB", op.Key, op.Result>>20, time.Duration(op.Invoke).Round(time.Second), op.Bound>>20)
			}
		}
	}
	for node, p := range peak {
		v.Counts["peak-mib-"+node] = int(p >> 20)
	}
	return v
}
