package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestWatchCommand(t *testing.T) {
	tc, c := lockTestCluster(t)
	ctx := t.Context()
	var first uint64
	for i, kv := range [][2]string{{"cfg/a", "1"}, {"other", "x"}, {"cfg/b", "2"}, {"cfg/a", "3"}} {
		r, err := c.Put(ctx, []byte(kv[0]), []byte(kv[1]))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.GetKv().GetModIndex()
		}
	}
	if _, err := c.Delete(ctx, []byte("cfg/b")); err != nil {
		t.Fatal(err)
	}
	from := fmt.Sprint(first - 1)

	code, out, errs := lockCLI(t, tc, "watch", "cfg/", "--prefix", "--from-index", from, "--count", "4", "--prev")
	if code != exitOK {
		t.Fatalf("watch = %d, stderr %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{
		fmt.Sprintf("%d put cfg/a = 1 (version 1)", first),
		fmt.Sprintf("%d put cfg/b = 2 (version 1)", first+2),
		fmt.Sprintf("%d put cfg/a = 3 (version 2) (was 1)", first+3),
		fmt.Sprintf("%d delete cfg/b (was 2)", first+4),
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("watch printed\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}

	code, out, errs = lockCLI(t, tc, "watch", "cfg/a", "--from-index", from, "--count", "2", "-o", "json")
	if code != exitOK {
		t.Fatalf("watch -o json = %d, stderr %s", code, errs)
	}
	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var j map[string]any
		if err := json.Unmarshal([]byte(line), &j); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, j)
	}
	if len(got) != 2 {
		t.Fatalf("watch -o json printed %d lines, want 2:\n%s", len(got), out)
	}
	kv, _ := got[1]["kv"].(map[string]any)
	if got[0]["kind"] != "change" || got[0]["type"] != "put" || got[0]["target"] != "keys" || got[0]["key"] != "cfg/a" ||
		kv["value"] != "3" || got[1]["index"] != float64(first+3) || got[1]["log_time"] == "" || got[1]["header"] == nil {
		t.Errorf("watch -o json = %s", out)
	}

	// A lock, from the index before it was taken.
	s, err := c.NewSession(ctx, 0, "w")
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Acquire(ctx, []byte("crit"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Release(ctx, []byte("crit"), a.GetToken()); err != nil {
		t.Fatal(err)
	}
	code, out, errs = lockCLI(t, tc, "watch", "--lock", "crit", "--from-index", fmt.Sprint(a.GetToken()-1), "--count", "2")
	wantLock := fmt.Sprintf("%d lock-grant crit held by session %d with token %d\n%d lock-release crit free\n",
		a.GetToken(), s.ID(), a.GetToken(), a.GetToken()+1)
	if code != exitOK || out != wantLock {
		t.Errorf("watch --lock = %d\n%s(stderr %s)\nwant\n%s", code, out, errs, wantLock)
	}
}

func TestWatchUsage(t *testing.T) {
	tc, _ := lockTestCluster(t)
	for _, args := range [][]string{
		{"watch"},
		{"watch", "k", "--lock", "L"},
		{"watch", "--cache", ""},
		{"watch", "k", "--count", "-1"},
		{"watch", "k", "--out-of-range-error"},
		{"watch", "--session", "abc"},
		{"watch", "a", "b"},
	} {
		if code, _, errs := lockCLI(t, tc, args...); code != exitUsage || !strings.HasPrefix(errs, "kvctl: ") {
			t.Errorf("kvctl %q = %d (stderr %q), want %d", args, code, errs, exitUsage)
		}
	}
}

func TestBenchWatch(t *testing.T) {
	tc, _ := lockTestCluster(t)
	for _, keys := range []string{"0", "4"} {
		code, out, errs := lockCLI(t, tc, "bench", "watch", "--watchers", "20", "--rate", "300", "--total", "60", "--keys", keys, "-o", "json")
		if code != exitOK {
			t.Fatalf("bench watch --keys %s = %d\n%s\nstderr %s", keys, code, out, errs)
		}
		var rep watchBenchReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("bench watch -o json: %v\n%s", err, out)
		}
		want := uint64(20 * 60)
		if keys == "4" {
			want = 20 * 60 / 4
		}
		if rep.Puts != 60 || rep.Expected != want || rep.Delivered != want || rep.Missing != 0 || rep.Duplicates != 0 || rep.P50Ms <= 0 || rep.P99Ms < rep.P50Ms {
			t.Errorf("bench watch --keys %s: %+v; want 60 puts, %d deliveries, none missing, latencies", keys, rep, want)
		}
	}
}
