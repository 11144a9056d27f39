package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChooseLogStore(t *testing.T) {
	mk := func(t *testing.T, wal, bolt bool) string {
		dir := t.TempDir()
		if wal {
			os.Mkdir(filepath.Join(dir, walDirName), 0o700)
			os.WriteFile(filepath.Join(dir, walDirName, walMetaFileName), nil, 0o600)
		}
		if bolt {
			os.WriteFile(filepath.Join(dir, boltFileName), nil, 0o600)
		}
		return dir
	}
	tests := []struct {
		name      string
		wal, bolt bool
		emptyWAL  bool // wal/ without raft-wal's meta file: a failed first start
		want      string
		got       string // "" when an error is expected
		errHas    string
	}{
		{name: "new dir, default", got: LogStoreWAL},
		{name: "new dir, bolt asked", want: LogStoreBolt, got: LogStoreBolt},
		{name: "new dir, wal asked", want: LogStoreWAL, got: LogStoreWAL},
		{name: "wal dir, unset", wal: true, got: LogStoreWAL},
		{name: "bolt dir, unset", bolt: true, got: LogStoreBolt},
		{name: "bolt dir, bolt asked", bolt: true, want: LogStoreBolt, got: LogStoreBolt},
		{name: "bolt dir, wal asked", bolt: true, want: LogStoreWAL, errHas: `already holds a "bolt" log: ask for "bolt" or leave the log store unset`},
		{name: "wal dir, bolt asked", wal: true, want: LogStoreBolt, errHas: `already holds a "wal" log: ask for "wal" or leave the log store unset`},
		{name: "both", wal: true, bolt: true, errHas: "holds both a WAL"},
		{name: "empty wal dir, bolt asked", emptyWAL: true, want: LogStoreBolt, got: LogStoreBolt},
		{name: "unknown", want: "rocks", errHas: `log store "rocks": want "wal" or "bolt"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := mk(t, tt.wal, tt.bolt)
			if tt.emptyWAL {
				os.Mkdir(filepath.Join(dir, walDirName), 0o700)
			}
			got, err := chooseLogStore(dir, tt.want)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("chooseLogStore = %q, %v; want error containing %q", got, err, tt.errHas)
				}
				return
			}
			if err != nil || got != tt.got {
				t.Fatalf("chooseLogStore = %q, %v; want %q", got, err, tt.got)
			}
		})
	}
}

func TestLockDataDir(t *testing.T) {
	dir := t.TempDir()
	first, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDataDir(dir); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second lock: %v, want \"locked by another process\"", err)
	}
	first.Close()
	again, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after the first was released: %v", err)
	}
	again.Close()
}

func TestDetectLogStoreReportsUnreadableDataDir(t *testing.T) {
	// A data dir path through a regular file: Stat fails with ENOTDIR, which
	// must be an error, not "no log here, start a new one".
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if got, err := detectLogStore(filepath.Join(file, "data")); err == nil {
		t.Fatalf("detectLogStore = %q, nil; want an error", got)
	}
}
