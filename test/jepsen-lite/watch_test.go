package main

import (
	"strings"
	"testing"
)

func TestCheckWatch(t *testing.T) {
	w := func(key, value string, effect uint64, out Outcome) Op {
		return Op{Workload: "watch", Type: "write", Key: key, Value: value, Effect: effect, Outcome: out}
	}
	ev := func(watcher int, typ string, index uint64, key, value string) Op {
		return Op{Workload: "watch", Client: watcher, Type: typ, Index: index, Key: key, Value: value, Effect: index, Outcome: OK}
	}
	writes := []Op{
		w("wt/0", "a", 11, OK), w("wt/1", "b", 12, OK), w("wt/0", "c", 0, Info), w("wt/1", "d", 14, OK),
		w("wt/0", "x", 0, Fail),
	}
	good := []Op{
		ev(1, "watch-start", 10, "", ""),
		ev(1, "watch-change", 11, "wt/0", "a"), ev(1, "watch-change", 12, "wt/1", "b"),
		ev(1, "watch-change", 13, "wt/0", "c"), // the unknown write took effect
		ev(1, "watch-change", 14, "wt/1", "d"),
		ev(1, "watch-progress", 20, "", ""),
	}
	tests := []struct {
		name   string
		stream []Op
		want   string // "" passes; else a problem contains this
	}{
		{"every write once in order", good, ""},
		{"a dropped change", append(append([]Op{}, good[:2]...), good[3:]...), "wt/1=b at index 12 is missing"},
		{"a reordered change", []Op{good[0], good[2], good[1], good[3], good[4], good[5]}, "out of order"},
		{"a duplicate", append(append([]Op{}, good[:3]...), good[2:]...), "delivered twice"},
		{"a change from a failed write", append(append([]Op{}, good...), ev(1, "watch-change", 21, "wt/0", "x")), "certainly failed"},
		{"a change nobody wrote", append(append([]Op{}, good...), ev(1, "watch-change", 21, "wt/0", "ghost")), "no write put that value"},
		{"a change at the wrong index", []Op{good[0], ev(1, "watch-change", 15, "wt/0", "a")}, "acknowledged at 11"},
		{"a stream that ends early covers less", good[:3], ""},
		{"a snapshot stands in for a gap", []Op{
			ev(1, "watch-start", 10, "", ""), ev(1, "watch-change", 11, "wt/0", "a"),
			ev(1, "watch-state", 13, "wt/0", "c"), {Workload: "watch", Client: 1, Type: "watch-state", Index: 13, Key: "wt/1", Value: "b", Effect: 12, Outcome: OK},
			ev(1, "watch-snapshot-end", 13, "", ""), ev(1, "watch-change", 14, "wt/1", "d"),
		}, ""},
		{"a snapshot older than an acknowledged write", []Op{
			ev(1, "watch-start", 10, "", ""),
			{Workload: "watch", Client: 1, Type: "watch-state", Index: 13, Key: "wt/0", Value: "a", Effect: 11, Outcome: OK},
			ev(1, "watch-snapshot-end", 13, "", ""),
		}, "lacks wt/1"},
		{"two watchers, one misses", append(append([]Op{}, good...), ev(2, "watch-start", 10, "", ""), ev(2, "watch-change", 11, "wt/0", "a"),
			ev(2, "watch-progress", 14, "", "")), "watcher 2 (stream from 10): acknowledged write wt/1=b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := CheckWatch(append(append([]Op{}, writes...), tc.stream...))
			switch {
			case tc.want == "" && !v.Pass:
				t.Errorf("CheckWatch failed: %v", v.Problems)
			case tc.want != "" && v.Pass:
				t.Errorf("CheckWatch passed; want a problem with %q", tc.want)
			case tc.want != "" && !strings.Contains(strings.Join(v.Problems, "\n"), tc.want):
				t.Errorf("problems %v; want one with %q", v.Problems, tc.want)
			}
		})
	}
}
