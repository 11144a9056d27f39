package backupfile

import (
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	w, err := Create(path, &kvpb.SnapshotInfo{Index: 42, LogTime: 7})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data[:len(data)/2])
	w.Write(data[len(data)/2:])
	sum := sha256.Sum256(data)
	if err := w.Finish(sum[:], uint64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTripAndRefusals(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.kvd")
	data := []byte("some snapshot bytes, long enough to be cut in the middle")
	write(t, path, data)
	if _, err := os.Stat(path + ".part"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the .part file is still there after Finish: %v", err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f.Data())
	f.Close()
	if string(got) != string(data) || f.Info.GetIndex() != 42 {
		t.Fatalf("Open read %q at index %d; want %q at 42", got, f.Info.GetIndex(), data)
	}

	raw, _ := os.ReadFile(path)
	cases := map[string][]byte{
		"truncated":     raw[:len(raw)-10],
		"flipped data":  flip(raw, len(raw)-60),
		"flipped magic": flip(raw, 2),
		"empty":         nil,
	}
	for name, b := range cases {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o600)
		if _, err := Open(p); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Open(%s) = %v; want ErrCorrupt", name, err)
		}
	}

	// A transfer that arrived damaged never becomes a file.
	w, err := Create(filepath.Join(dir, "bad.kvd"), &kvpb.SnapshotInfo{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("abc"))
	if err := w.Finish(make([]byte, 32), 3); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Finish with a wrong checksum = %v; want ErrCorrupt", err)
	}
	for _, n := range []string{"bad.kvd", "bad.kvd.part"} {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a refused Finish", n)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x01
	return c
}
