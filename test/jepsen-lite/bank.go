package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"time"

	"github.com/kvdproject/kvd/client"
)

// ---------------------------------------------------------------------------
// Bank: accounts with a fixed total. A transfer is one transaction that
// moves an amount between two accounts only if neither changed since it
// was read (compares on mod_index or version, puts of both new balances);
// a read is one transaction of gets over every account, or one List of
// them: one log entry or one state, so it must see the exact total.

const (
	bankAccounts  = 5
	bankInitial   = 100
	bankMaxAmount = 10
	bankPrefix    = "bank/"
)

func bankKey(i int) string { return fmt.Sprintf("%s%d", bankPrefix, i) }

// InitBank creates the accounts, each with bankInitial, before the
// workers start (one Put each, so that a transaction bug shows in the
// transfers, not in the set-up), recording one "init" operation that
// names them all: the bank checker takes the total from it.
func InitBank(ctx context.Context, e *Env, c *client.Client) error {
	accounts := map[string]string{}
	for i := range bankAccounts {
		accounts[bankKey(i)] = strconv.Itoa(bankInitial)
	}
	op := e.H.Invoke(&Op{Client: -5, Workload: "bank", Type: "init", Accounts: accounts})
	for _, k := range sortedKeys(accounts) {
		// Nothing else writes the accounts yet: the same value again is
		// harmless, so a put of unknown outcome is simply sent again.
		var err error
		for try := 0; try < 5; try++ {
			octx, cancel := opCtx(ctx)
			_, err = c.Put(octx, []byte(k), []byte(accounts[k]))
			cancel()
			if err == nil {
				break
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
		if err != nil {
			e.H.Error(op, err)
			return fmt.Errorf("create account %s: %w", k, err)
		}
	}
	e.H.OK(op, nil)
	return nil
}

// BankTransfer moves money between two accounts until ctx ends: it reads
// both, then commits a transaction that puts both new balances if neither
// changed. It never makes a balance negative.
func BankTransfer(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	for ctx.Err() == nil {
		e.throttle(ctx)
		from := rng.IntN(bankAccounts)
		to := (from + 1 + rng.IntN(bankAccounts-1)) % bankAccounts
		fk, tk := []byte(bankKey(from)), []byte(bankKey(to))
		octx, cancel := opCtx(ctx)
		fr, err1 := c.Get(octx, fk)
		tr, err2 := c.Get(octx, tk)
		if err := errors.Join(err1, err2); err != nil {
			cancel()
			continue // reading is not transferring: nothing to record
		}
		fb, err1 := strconv.ParseInt(string(fr.GetKv().GetValue()), 10, 64)
		tb, err2 := strconv.ParseInt(string(tr.GetKv().GetValue()), 10, 64)
		if err1 != nil || err2 != nil || fb <= 0 {
			cancel()
			continue // a bad balance is the readers' to report
		}
		amount := 1 + rng.Int64N(min(fb, bankMaxAmount))
		// Compare on mod_index or on version: either changes with every
		// write of the account.
		cmp := func(kv []byte, mod, ver uint64) client.Cmp {
			if rng.IntN(2) == 0 {
				return client.Compare(client.ModIndex(kv), "=", mod)
			}
			return client.Compare(client.Version(kv), "=", ver)
		}
		op := e.H.Invoke(&Op{Client: id, Workload: "bank", Type: "transfer", Key: string(fk), To: string(tk), Delta: amount})
		resp, err := c.Txn().
			If(cmp(fk, fr.GetKv().GetModIndex(), fr.GetKv().GetVersion()), cmp(tk, tr.GetKv().GetModIndex(), tr.GetKv().GetVersion())).
			Then(client.OpPut(fk, []byte(strconv.FormatInt(fb-amount, 10))), client.OpPut(tk, []byte(strconv.FormatInt(tb+amount, 10)))).
			Commit(octx)
		cancel()
		switch {
		case err != nil:
			e.H.Error(op, err)
		case !resp.GetSucceeded():
			op.State = "conflict"
			e.H.Fail(op, errors.New("an account changed since it was read"))
		default:
			if rs := resp.GetResults(); len(rs) > 0 {
				op.Effect = rs[0].GetPut().GetKv().GetModIndex()
			}
			e.H.OK(op, resp.GetHeader())
		}
	}
}

// BankReader reads every account until ctx ends, alternating a
// transaction of gets and a List of the prefix.
func BankReader(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	for ctx.Err() == nil {
		e.throttle(ctx)
		octx, cancel := opCtx(ctx)
		if rng.IntN(2) == 0 {
			readBankTxn(octx, e, c, id, "bank")
		} else {
			readBankList(octx, e, c, id)
		}
		cancel()
	}
}

// readBankTxn reads every account in one transaction of gets (one log
// entry: one snapshot), recorded as a read-txn of workload. It reports
// whether the read succeeded.
func readBankTxn(ctx context.Context, e *Env, c *client.Client, id int, workload string) bool {
	var gets []client.Op
	for i := range bankAccounts {
		gets = append(gets, client.OpGet([]byte(bankKey(i))))
	}
	op := e.H.Invoke(&Op{Client: id, Workload: workload, Type: "read-txn"})
	resp, err := c.Txn().Then(gets...).Commit(ctx)
	if err != nil {
		e.H.Error(op, err)
		return false
	}
	op.Accounts = map[string]string{}
	for _, r := range resp.GetResults() {
		if r.GetValueUnavailable() {
			// A retry answered from the first result, and an account has
			// changed since: the values are no longer known.
			e.H.Fail(op, errors.New("a retried read's value is no longer available"))
			return false
		}
		if kv := r.GetGet().GetKv(); kv != nil {
			op.Accounts[string(kv.GetKey())] = string(kv.GetValue())
		}
	}
	e.H.OK(op, resp.GetHeader())
	return true
}

// readBankList reads every account with one List (one page: one state).
func readBankList(ctx context.Context, e *Env, c *client.Client, id int) {
	op := e.H.Invoke(&Op{Client: id, Workload: "bank", Type: "read-list"})
	resp, err := c.List(ctx, []byte(bankPrefix), client.WithLimit(100))
	if err != nil {
		e.H.Error(op, err)
		return
	}
	if resp.GetMore() {
		e.H.Fail(op, errors.New("accounts over more than one page: not one state"))
		return
	}
	op.Accounts = map[string]string{}
	for _, kv := range resp.GetKvs() {
		op.Accounts[string(kv.GetKey())] = string(kv.GetValue())
	}
	e.H.OK(op, resp.GetHeader())
}

// CheckBank checks the bank: every read (transactions of gets and Lists,
// during the run and the final one after it) sees every account, none
// negative, and exactly the total the accounts were created with; at
// least one final read succeeded. Transfers of unknown outcome are fine:
// applied or not, they keep the total.
func CheckBank(ops []Op) *Verdict {
	v := newVerdict("bank")
	var accounts []string
	var total int64
	for _, op := range ops {
		if op.Workload == "bank" && op.Type == "init" && op.Outcome == OK {
			accounts = sortedKeys(op.Accounts)
			for _, k := range accounts {
				n, _ := strconv.ParseInt(op.Accounts[k], 10, 64)
				total += n
			}
		}
	}
	for _, op := range ops {
		switch {
		case op.Workload == "bank" && op.Type == "transfer":
			switch {
			case op.Outcome == OK:
				v.Counts["transfers-ok"]++
			case op.State == "conflict":
				v.Counts["transfers-conflict"]++
			case op.Outcome == Info:
				v.Counts["transfers-unknown"]++
			default:
				v.Counts["transfers-failed"]++
			}
		case op.Workload == "bank" && op.Type == "init" && op.Outcome != OK:
			v.fail("the accounts were not created: %s", op.Err)
		}
	}
	if accounts == nil {
		if v.Counts["transfers-ok"]+v.Counts["transfers-unknown"] > 0 {
			v.fail("transfers without a successful init: no total to judge them by")
		}
		return v
	}
	v.Counts["accounts"] = len(accounts)
	finals := 0
	for i := range ops {
		op := &ops[i]
		if (op.Workload != "bank" && op.Workload != "final") || (op.Type != "read-txn" && op.Type != "read-list") || op.Outcome != OK {
			continue
		}
		v.Counts["reads-"+op.Type]++
		if op.Workload == "final" {
			finals++
		}
		var sum int64
		var bad []string
		for _, k := range accounts {
			s, ok := op.Accounts[k]
			if !ok {
				bad = append(bad, k+" missing")
				continue
			}
			n, err := strconv.ParseInt(s, 10, 64)
			switch {
			case err != nil:
				bad = append(bad, fmt.Sprintf("%s=%q not a number", k, s))
			case n < 0:
				bad = append(bad, fmt.Sprintf("%s=%d negative", k, n))
			}
			sum += n
		}
		if len(bad) == 0 && sum == total {
			continue
		}
		sort.Strings(bad)
		v.fail("%s %s (op %d, index %d, by %s): total %d, want %d; %v; balances %v",
			op.Workload, op.Type, op.ID, op.Index, op.ServedBy, sum, total, bad, op.Accounts)
	}
	v.Counts["final-reads"] = finals
	if finals == 0 {
		v.fail("no final read of the accounts succeeded after the faults")
	}
	return v
}
