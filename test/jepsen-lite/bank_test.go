package main

import "testing"

func accounts(vals ...string) map[string]string {
	m := map[string]string{}
	for i, v := range vals {
		if v != "" {
			m[bankKey(i)] = v
		}
	}
	return m
}

func TestCheckBank(t *testing.T) {
	init := Op{ID: 0, Workload: "bank", Type: "init", Accounts: accounts("100", "100", "100"), Invoke: 0, Complete: 5, Outcome: OK}
	final := Op{ID: 99, Workload: "final", Type: "read-txn", Accounts: accounts("90", "110", "100"), Invoke: 100, Complete: 101, Outcome: OK}
	tests := []struct {
		name string
		ops  []Op
		pass bool
	}{
		{"transfers keep the total", []Op{
			init,
			{ID: 1, Workload: "bank", Type: "transfer", Key: bankKey(0), To: bankKey(1), Delta: 10, Invoke: 10, Complete: 20, Outcome: OK},
			{ID: 2, Workload: "bank", Type: "read-list", Accounts: accounts("90", "110", "100"), Invoke: 21, Complete: 30, Outcome: OK},
			{ID: 3, Workload: "bank", Type: "transfer", Key: bankKey(2), To: bankKey(1), Delta: 5, Invoke: 31, Complete: 40, Outcome: Info},
			{ID: 4, Workload: "bank", Type: "read-txn", Accounts: accounts("90", "115", "95"), Invoke: 41, Complete: 50, Outcome: OK},
			// A read that failed saw nothing.
			{ID: 5, Workload: "bank", Type: "read-txn", Accounts: accounts("1"), Invoke: 51, Complete: 60, Outcome: Fail},
			final,
		}, true},
		{"partial transfer", []Op{
			init,
			{ID: 1, Workload: "bank", Type: "transfer", Key: bankKey(0), To: bankKey(1), Delta: 10, Invoke: 10, Complete: 20, Outcome: OK},
			{ID: 2, Workload: "bank", Type: "read-txn", Accounts: accounts("90", "100", "100"), Invoke: 21, Complete: 30, Outcome: OK},
			final,
		}, false},
		{"account missing", []Op{
			init,
			{ID: 2, Workload: "bank", Type: "read-list", Accounts: accounts("100", "", "100"), Invoke: 21, Complete: 30, Outcome: OK},
			final,
		}, false},
		{"negative balance with the right total", []Op{
			init,
			{ID: 2, Workload: "bank", Type: "read-txn", Accounts: accounts("-10", "210", "100"), Invoke: 21, Complete: 30, Outcome: OK},
			final,
		}, false},
		{"final read wrong", []Op{
			init,
			{ID: 99, Workload: "final", Type: "read-txn", Accounts: accounts("90", "100", "100"), Invoke: 100, Complete: 101, Outcome: OK},
		}, false},
		{"no final read", []Op{init}, false},
		{"init failed", []Op{{Workload: "bank", Type: "init", Outcome: Fail, Err: "boom"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := CheckBank(tc.ops)
			if v.Pass != tc.pass {
				t.Errorf("CheckBank pass = %v, want %v (%v)", v.Pass, tc.pass, v.Problems)
			}
		})
	}
}
