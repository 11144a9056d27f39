package main

import "testing"

func TestCheckElection(t *testing.T) {
	el := func(op Op) Op {
		op.Workload, op.Key = "election", "el/0"
		if op.Outcome == "" {
			op.Outcome = OK
		}
		return op
	}
	base := []Op{
		el(Op{ID: 1, Type: "campaign", Token: 10, Session: 1, Value: "a", HeldSince: 100, ExpiresAt: 1100, Invoke: 0, Complete: 5, Recipe: "election"}),
		el(Op{ID: 2, Type: "fenced-put", Token: 10, Session: 1, Effect: 11, Index: 11, Invoke: 5, Complete: 6}),
		el(Op{ID: 3, Type: "resource", Token: 10, Session: 1, Index: 11, Invoke: 6, Complete: 7}),
		el(Op{ID: 4, Type: "proclaim", Token: 10, Session: 1, Value: "a-p0", Invoke: 7, Complete: 8}),
		el(Op{ID: 5, Type: "observe", Client: 50, Token: 10, Session: 1, Value: "a", Index: 10, Found: true, Invoke: 5, Complete: 5}),
		el(Op{ID: 6, Type: "observe", Client: 50, Token: 10, Session: 1, Value: "a-p0", Index: 12, Found: true, Invoke: 8, Complete: 8}),
		el(Op{ID: 7, Type: "resign", Token: 10, Session: 1, Invoke: 8, Complete: 9}),
		el(Op{ID: 8, Type: "campaign", Token: 13, Session: 2, Value: "b", HeldSince: 200, ExpiresAt: 1200, Invoke: 6, Complete: 10, Recipe: "election"}),
		el(Op{ID: 9, Type: "observe", Client: 50, Token: 13, Session: 2, Value: "b", Index: 13, Found: true, Invoke: 10, Complete: 10}),
		el(Op{ID: 10, Type: "leader", Client: 50, Token: 13, Session: 2, Value: "b", Index: 14, Found: true, Invoke: 11, Complete: 12}),
		el(Op{ID: 11, Type: "leader", Client: 51, Invoke: 13, Complete: 14}), // nobody leads
		// A campaign of unknown outcome and a leader read of a token it
		// may have been granted.
		el(Op{ID: 12, Type: "campaign", Session: 3, Value: "c", Invoke: 11, Complete: 20, Outcome: Info}),
		el(Op{ID: 13, Type: "leader", Client: 51, Token: 15, Session: 3, Value: "c", Index: 15, Found: true, Invoke: 15, Complete: 16}),
		// The same session campaigns again and gets its term back, with
		// the value it had (its lock state not read back).
		el(Op{ID: 14, Type: "campaign", Token: 15, Session: 3, Value: "c2", Invoke: 17, Complete: 18, Recipe: "election"}),
		el(Op{ID: 15, Type: "observe", Client: 50, Token: 15, Session: 3, Value: "c", Index: 15, Found: true, Invoke: 18, Complete: 18}),
	}
	if v := CheckElection(base); !v.Pass {
		t.Fatalf("CheckElection(good) failed: %v", v.Problems)
	}
	bad := map[string]Op{
		"observer sees the token go back":        el(Op{ID: 20, Type: "observe", Client: 50, Token: 10, Session: 1, Value: "a-p0", Index: 12, Found: true, Invoke: 11, Complete: 11}),
		"leader read below a finished campaign":  el(Op{ID: 20, Type: "leader", Client: 52, Token: 10, Session: 1, Value: "a-p0", Index: 12, Found: true, Invoke: 11, Complete: 12}),
		"leader read of a resigned term":         el(Op{ID: 20, Type: "leader", Client: 52, Token: 10, Session: 1, Value: "a-p0", Index: 12, Found: true, Invoke: 10, Complete: 11}),
		"a term seen past its successor's grant": el(Op{ID: 20, Type: "observe", Client: 53, Token: 10, Session: 1, Value: "a-p0", Index: 14, Found: true, Invoke: 11, Complete: 11}),
		"a token seen before its grant":          el(Op{ID: 20, Type: "observe", Client: 53, Token: 13, Session: 2, Value: "b", Index: 12, Found: true, Invoke: 11, Complete: 11}),
		"a value nobody set":                     el(Op{ID: 20, Type: "observe", Client: 53, Token: 13, Session: 2, Value: "zzz", Index: 13, Found: true, Invoke: 11, Complete: 11}),
		"another session's term":                 el(Op{ID: 20, Type: "observe", Client: 53, Token: 13, Session: 1, Value: "b", Index: 13, Found: true, Invoke: 11, Complete: 11}),
		"a stale token accepted by the resource": el(Op{ID: 20, Type: "resource", Token: 10, Session: 1, Index: 14, Invoke: 11, Complete: 12}),
		"two leaders for one token":              el(Op{ID: 20, Type: "campaign", Token: 13, Session: 3, Value: "c", HeldSince: 200, ExpiresAt: 1300, Invoke: 6, Complete: 10, Recipe: "election"}),
	}
	for name, op := range bad {
		t.Run(name, func(t *testing.T) {
			if v := CheckElection(append(base[:len(base):len(base)], op)); v.Pass {
				t.Errorf("CheckElection passed a history with %s", name)
			}
		})
	}
	t.Run("a leader made while the last one's session lived", func(t *testing.T) {
		var ops []Op
		for _, op := range base {
			if op.Type != "resign" {
				ops = append(ops, op)
			}
		}
		if v := CheckElection(ops); v.Pass {
			t.Errorf("CheckElection passed a term granted at log time 200 without a resign, before the last leader's deadline 1100")
		}
	})
	t.Run("crashed leader's successor within the lock-delay", func(t *testing.T) {
		ops := []Op{
			el(Op{ID: 1, Type: "campaign", Token: 10, Session: 1, Value: "a", HeldSince: 100, ExpiresAt: 1100, LockDelayMs: 1, Invoke: 0, Complete: 5}),
			el(Op{ID: 2, Type: "crash", Token: 10, Session: 1, Invoke: 6, Complete: 6}),
			el(Op{ID: 3, Type: "campaign", Token: 13, Session: 2, Value: "b", HeldSince: 1100 + 500_000, ExpiresAt: 5000000, Invoke: 6, Complete: 10}),
		}
		if v := CheckElection(ops); v.Pass {
			t.Errorf("CheckElection passed a term begun 0.5 ms after a crashed leader's deadline, inside its 1 ms lock-delay")
		}
		ops[2].HeldSince = 1100 + 1_000_000
		if v := CheckElection(ops); !v.Pass {
			t.Errorf("CheckElection failed a term begun at the end of the lock-delay: %v", v.Problems)
		}
	})
}
