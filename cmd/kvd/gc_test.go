package main

import (
	"runtime/debug"
	"testing"
)

// TestSetGCPercent: the flag's value is applied unless GOGC is set in the
// environment and the flag was not given.
func TestSetGCPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	current := func() int { v := debug.SetGCPercent(-1); debug.SetGCPercent(v); return v }

	t.Setenv("GOGC", "")
	if err := setGCPercent(defaultGCPercent, false); err != nil || current() != defaultGCPercent {
		t.Errorf("no GOGC, default: err %v, GC percent %d, want %d", err, current(), defaultGCPercent)
	}
	t.Setenv("GOGC", "200")
	debug.SetGCPercent(200) // what the runtime read at start
	if err := setGCPercent(defaultGCPercent, false); err != nil || current() != 200 {
		t.Errorf("GOGC=200, flag not given: err %v, GC percent %d, want 200", err, current())
	}
	if err := setGCPercent(70, true); err != nil || current() != 70 {
		t.Errorf("GOGC=200, --gc-percent 70: err %v, GC percent %d, want 70", err, current())
	}
	if err := setGCPercent(5, true); err == nil || current() != 70 {
		t.Errorf("--gc-percent 5: err %v, GC percent %d: want an error and no change", err, current())
	}
}
