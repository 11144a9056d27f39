package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/election"
	"github.com/kvdproject/kvd/lock"
)

// ---------------------------------------------------------------------------
// Election: candidates campaign on a few election names through package
// election. A leader uses its term's token on the fenced put and the
// outside resource (as a lock holder does), proclaims new values now and
// then, and then resigns, or crashes: its client closes without a word,
// so that its session must expire on the server (and the lock-delay run)
// before the next candidate leads. Faults kill, pause and cut leaders off
// too. Observers follow each election (Observe) and read its leader
// (Leader).

const (
	electionNames = 2
	// electionCrashOneIn: one term in this many ends in a crash instead of
	// a resign.
	electionCrashOneIn = 8
	observeEvery       = 50 * time.Millisecond // between two Leader reads
)

func electionName(rng *rand.Rand) string { return fmt.Sprintf("el/%d", rng.IntN(electionNames)) }

// ElectionCandidate campaigns, leads and resigns (or crashes) until ctx
// ends.
func ElectionCandidate(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	var c *client.Client
	var ls *lock.Session
	defer func() {
		if ls != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ls.Close(cctx)
			cancel()
		}
		if c != nil {
			c.Close()
		}
	}()
	for n := 0; ctx.Err() == nil; n++ {
		if c == nil {
			var err error
			if c, err = e.NewClient(); err != nil {
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
		}
		if ls = keepLockSession(ctx, e, c, ls, id, "election"); ls == nil {
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		e.throttle(ctx)
		if crashed := electionTerm(ctx, e, c, ls, id, electionName(rng), n, rng); crashed {
			// The client goes without closing its session: keepalives
			// stop, and the server expires the session after its TTL.
			c.Close()
			c, ls = nil, nil
		}
	}
}

// electionTerm campaigns once on name and, elected, leads one term. It
// reports whether the term ended in a crash.
func electionTerm(ctx context.Context, e *Env, c *client.Client, ls *lock.Session, id int, name string, n int, rng *rand.Rand) bool {
	var delay time.Duration
	if rng.IntN(3) == 0 {
		delay = lockDelay
	}
	el := election.New(ls, name, election.WithLockDelay(delay))
	value := fmt.Sprintf("e%d-%d", id, n)
	octx, cancel := context.WithTimeout(ctx, 2*time.Second)
	op := e.H.Invoke(&Op{Client: id, Workload: "election", Type: "campaign", Key: name, Session: ls.ID(), Value: value, Recipe: "election"})
	err := el.Campaign(octx, []byte(value))
	cancel()
	if err != nil {
		// Campaign takes the session out of the line itself; a grant it
		// may have given back is a cancel-wait of unknown outcome.
		e.H.Error(op, err)
		cop := e.H.Invoke(&Op{Client: id, Workload: "election", Type: "cancel-wait", Key: name, Session: ls.ID()})
		e.H.Info(cop, errors.New("election.Campaign cleanup"))
		return false
	}
	op.Token = el.Token()
	// The election keeps its grant to itself: read the lock for the
	// term's log time, its session's deadline and its lock-delay, which
	// the grant checks judge the next term by. (A deadline read later than
	// the grant is no earlier: it only moves later while the session
	// lives.)
	gctx, cancel := opCtx(ctx)
	if resp, err := c.GetLock(gctx, []byte(name)); err == nil && resp.GetLock().GetToken() == op.Token {
		li := resp.GetLock()
		op.HeldSince, op.ExpiresAt, op.LockDelayMs = li.GetHeldSince(), li.GetExpiresAt(), li.GetLockDelayMs()
	}
	cancel()
	e.H.OK(op, nil)
	token := op.Token
	for k, rounds := 0, 1+rng.IntN(4); k < rounds; k++ {
		select {
		case <-el.Lost():
			k = rounds // the term ended: a careful leader stops acting
			continue
		default:
		}
		useLock(ctx, e, "election", c, ls.ClientSession(), id, name, token, op.ID*8+k)
		if rng.IntN(2) == 0 {
			pv := fmt.Sprintf("%s-p%d", value, k)
			pctx, cancel := opCtx(ctx)
			pop := e.H.Invoke(&Op{Client: id, Workload: "election", Type: "proclaim", Key: name, Token: token, Session: ls.ID(), Value: pv})
			err := el.Proclaim(pctx, []byte(pv))
			cancel()
			switch {
			case err == nil:
				e.H.OK(pop, nil)
			case errors.Is(err, election.ErrNotLeader):
				e.H.Fail(pop, err)
			default:
				e.H.Error(pop, err)
			}
		}
		sleepCtx(ctx, time.Duration(rng.IntN(30))*time.Millisecond)
	}
	if rng.IntN(electionCrashOneIn) == 0 {
		cop := e.H.Invoke(&Op{Client: id, Workload: "election", Type: "crash", Key: name, Token: token, Session: ls.ID()})
		e.H.OK(cop, nil)
		return true
	}
	// A term the candidate saw end (Lost) may still stand on the server,
	// until its session expires there: Resign then returns nil without
	// releasing anything once the Election has forgotten the term. Such a
	// resign says nothing certain about the server.
	lost := false
	select {
	case <-el.Lost():
		lost = true
	default:
	}
	rctx, cancel := opCtx(ctx)
	defer cancel()
	rop := e.H.Invoke(&Op{Client: id, Workload: "election", Type: "resign", Key: name, Token: token, Session: ls.ID()})
	err = el.Resign(rctx)
	switch {
	case err != nil:
		e.H.Info(rop, err) // still leading, as far as it knows
		return false
	case lost:
		e.H.Info(rop, errors.New("the term was lost before the resign: its end on the server is the session's"))
		return false
	}
	// Resign gives no header: the term ended, not known where in the log.
	e.H.OK(rop, nil)
	return false
}

// ElectionObserver follows every election until ctx ends: one Observe
// stream per election (each Leader it reports recorded as an observe op;
// a stream that ends is started again) and Leader reads in between.
func ElectionObserver(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	// Observe and Leader only read through the session's client; the
	// session is not needed alive after this.
	var ls *lock.Session
	for ls == nil && ctx.Err() == nil {
		sctx, cancel := opCtx(ctx)
		ls, err = lock.NewSession(sctx, c, lock.WithTTL(clientSessionTT), lock.WithName(fmt.Sprintf("jepsen-observer-%d", id)))
		cancel()
		if err != nil {
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	if ls == nil {
		return
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ls.Close(cctx)
		cancel()
	}()
	var els []*election.Election
	var wg sync.WaitGroup
	for i := range electionNames {
		el := election.New(ls, fmt.Sprintf("el/%d", i))
		els = append(els, el)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				for l := range el.Observe(ctx) {
					op := e.H.Invoke(&Op{Client: id, Workload: "election", Type: "observe", Key: el.Name()})
					leaderOp(op, l)
					e.H.OK(op, nil)
				}
				sleepCtx(ctx, 100*time.Millisecond)
			}
		}()
	}
	defer wg.Wait()
	for ctx.Err() == nil {
		e.throttle(ctx)
		el := els[rng.IntN(len(els))]
		octx, cancel := opCtx(ctx)
		op := e.H.Invoke(&Op{Client: id, Workload: "election", Type: "leader", Key: el.Name()})
		l, err := el.Leader(octx)
		cancel()
		switch {
		case err == nil:
			leaderOp(op, l)
			e.H.OK(op, nil)
		case errors.Is(err, election.ErrNoLeader):
			e.H.OK(op, nil)
		default:
			e.H.Error(op, err)
		}
		sleepCtx(ctx, observeEvery)
	}
}

// leaderOp records what an Observe or Leader said.
func leaderOp(op *Op, l election.Leader) {
	op.Found, op.Token, op.Session, op.Value, op.HeldSince, op.Index = true, l.Token, l.Session, string(l.Value), l.HeldSince, l.Index
}

// CheckElection checks the election workload. The grants, fenced puts and
// outside resource are judged as the lock checker judges locks (one leader
// per token, tokens increasing in grant order, no fenced write or
// resource write with a token after its successor was granted, no new
// term before the last one's session deadline unless it resigned, nor
// within its lock-delay after that deadline). Then what readers saw:
//   - each Observe stream (an observer and an election) never sees the
//     token or the index go backwards;
//   - every leader seen (Observe or Leader) at index I with token T has
//     T <= I, and no grant made between them (a token in (T, I]): the
//     state at I could not have had T as leader;
//   - a leader seen with a token some campaign was granted has that
//     campaign's session, and its value is one of the session's campaign
//     values for the election or one of the term's proclaims;
//   - Leader is linearizable against the grants: a read invoked after a
//     campaign returned, a resign returned or another read returned sees
//     no token below theirs, and not a token that had resigned.
func CheckElection(ops []Op) *Verdict {
	v := newVerdict("election")
	checkGrants(v, ops, electionGrantOps)
	type term struct {
		grant  *Op
		values map[string]bool
	}
	terms := map[string]map[uint64]*term{} // election -> token -> term
	granted := map[string][]uint64{}       // election -> tokens granted, sorted
	// A session that campaigns again while it leads (its last campaign's
	// or resign's outcome was unknown) gets its term back, with the value
	// that term had: any of the session's campaign values may stand.
	type candidacy struct {
		key     string
		session uint64
	}
	campaignValues := map[candidacy][]string{}
	for i := range ops {
		op := &ops[i]
		if op.Workload != "election" || op.Type != "campaign" {
			continue
		}
		campaignValues[candidacy{op.Key, op.Session}] = append(campaignValues[candidacy{op.Key, op.Session}], op.Value)
		if op.Outcome == OK && op.Token > 0 {
			if terms[op.Key] == nil {
				terms[op.Key] = map[uint64]*term{}
			}
			if terms[op.Key][op.Token] == nil {
				terms[op.Key][op.Token] = &term{grant: op, values: map[string]bool{}}
				granted[op.Key] = append(granted[op.Key], op.Token)
			}
		}
	}
	for key, ts := range terms {
		for _, t := range ts {
			for _, val := range campaignValues[candidacy{key, t.grant.Session}] {
				t.values[val] = true
			}
		}
	}
	for k := range granted {
		sort.Slice(granted[k], func(i, j int) bool { return granted[k][i] < granted[k][j] })
	}
	for i := range ops {
		op := &ops[i]
		if op.Workload == "election" && op.Type == "proclaim" && op.Outcome != Fail {
			if t := terms[op.Key][op.Token]; t != nil {
				t.values[op.Value] = true
			}
		}
	}
	// seen judges one leader seen at its index.
	seen := func(op *Op) {
		if op.Token > op.Index {
			v.fail("election %s: %s (op %d, client %d) saw token %d at index %d: a term cannot begin after the state that shows it",
				op.Key, op.Type, op.ID, op.Client, op.Token, op.Index)
		}
		gs := granted[op.Key]
		j := sort.Search(len(gs), func(j int) bool { return gs[j] > op.Token })
		if j < len(gs) && gs[j] <= op.Index {
			v.fail("election %s: %s (op %d, client %d) saw token %d at index %d, but token %d was granted at index %d",
				op.Key, op.Type, op.ID, op.Client, op.Token, op.Index, gs[j], gs[j])
		}
		t := terms[op.Key][op.Token]
		if t == nil {
			v.Counts["seen-token-of-unknown-campaign"]++
			return
		}
		if op.Session != t.grant.Session {
			v.fail("election %s: %s (op %d) saw token %d held by session %d, granted to session %d",
				op.Key, op.Type, op.ID, op.Token, op.Session, t.grant.Session)
		}
		if !t.values[op.Value] {
			v.fail("election %s: %s (op %d) saw token %d with value %q, which neither its session's campaigns nor its proclaims set",
				op.Key, op.Type, op.ID, op.Token, op.Value)
		}
	}
	// Observe streams, in the order each observer received them.
	type stream struct {
		client int
		key    string
	}
	last := map[stream]*Op{}
	for i := range ops {
		op := &ops[i]
		if op.Workload != "election" || op.Type != "observe" || op.Outcome != OK {
			continue
		}
		v.Counts["observed"]++
		seen(op)
		s := stream{op.Client, op.Key}
		if p := last[s]; p != nil && (op.Token < p.Token || op.Index < p.Index) {
			v.fail("election %s: observer %d saw token %d at index %d after token %d at index %d: it went backwards",
				op.Key, op.Client, op.Token, op.Index, p.Token, p.Index)
		}
		last[s] = op
	}
	// Leader reads, against everything that returned before they began.
	type event struct {
		at     int64 // when it completed
		token  uint64
		resign bool
	}
	events := map[string][]event{}
	var reads []*Op
	for i := range ops {
		op := &ops[i]
		if op.Workload != "election" || op.Outcome != OK {
			continue
		}
		switch {
		case op.Type == "campaign" && op.Token > 0:
			events[op.Key] = append(events[op.Key], event{at: op.Complete, token: op.Token})
		case op.Type == "resign":
			events[op.Key] = append(events[op.Key], event{at: op.Complete, token: op.Token, resign: true})
		case op.Type == "leader":
			v.Counts["leader-reads"]++
			if op.Found {
				seen(op)
				events[op.Key] = append(events[op.Key], event{at: op.Complete, token: op.Token})
			} else {
				v.Counts["leader-reads-none"]++
			}
			reads = append(reads, op)
		}
	}
	for k := range events {
		sort.Slice(events[k], func(i, j int) bool { return events[k][i].at < events[k][j].at })
	}
	sort.Slice(reads, func(i, j int) bool { return reads[i].Invoke < reads[j].Invoke })
	type past struct {
		next     int
		floor    uint64
		resigned map[uint64]bool
	}
	pasts := map[string]*past{}
	for _, r := range reads {
		p := pasts[r.Key]
		if p == nil {
			p = &past{resigned: map[uint64]bool{}}
			pasts[r.Key] = p
		}
		evs := events[r.Key]
		for ; p.next < len(evs) && evs[p.next].at < r.Invoke; p.next++ {
			if evs[p.next].resign {
				p.resigned[evs[p.next].token] = true
			} else {
				p.floor = max(p.floor, evs[p.next].token)
			}
		}
		switch {
		case !r.Found:
		case r.Token < p.floor:
			v.fail("election %s: Leader (op %d) read token %d, below token %d, which was granted or read before it began",
				r.Key, r.ID, r.Token, p.floor)
		case p.resigned[r.Token]:
			v.fail("election %s: Leader (op %d) read token %d, whose term had resigned before it began", r.Key, r.ID, r.Token)
		}
	}
	for _, op := range ops {
		if op.Workload != "election" {
			continue
		}
		switch op.Type {
		case "proclaim", "resign", "crash":
			v.Counts[op.Type+"-"+string(op.Outcome)]++
		}
	}
	return v
}
