package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestServePprof(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, addr := range []string{"0.0.0.0:0", "10.1.2.3:0", ":0", "nohost"} {
		if stop, err := servePprof(addr, log); err == nil {
			stop()
			t.Errorf("servePprof(%q) = nil error, want a refusal of a non-loopback address", addr)
		}
	}
	stop, err := servePprof("127.0.0.1:0", log)
	if err != nil {
		t.Fatalf("servePprof(127.0.0.1:0) = %v", err)
	}
	stop()
}

func TestPprofFlag(t *testing.T) {
	var out, errb strings.Builder
	code := run([]string{"--name", "n1", "--data-dir", t.TempDir(), "--pprof-addr", "0.0.0.0:6060"}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "loopback") {
		t.Errorf("kvd --pprof-addr 0.0.0.0:6060: exit %d, stderr %q; want 2 and a loopback message", code, errb.String())
	}
}
