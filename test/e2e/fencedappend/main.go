// Command fencedappend models a resource fenced by election tokens: it
// appends the line "CANDIDATE TOKEN" to FILE unless FILE already holds a
// line with a higher token. It holds an exclusive flock on FILE while it
// reads and appends, so concurrent writers are serialized. A refused
// append is recorded in FILE.refused ("CANDIDATE TOKEN HIGHEST") and exits 3.
//
//	fencedappend FILE CANDIDATE TOKEN
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: fencedappend FILE CANDIDATE TOKEN")
		os.Exit(2)
	}
	file, cand := os.Args[1], os.Args[2]
	token, err := strconv.ParseUint(os.Args[3], 10, 64)
	if err != nil || token == 0 {
		fmt.Fprintf(os.Stderr, "fencedappend: bad token %q\n", os.Args[3])
		os.Exit(2)
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		fail(err)
	}
	highest, err := highestToken(f)
	if err != nil {
		fail(err)
	}
	if token < highest {
		r, err := os.OpenFile(file+".refused", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fail(err)
		}
		fmt.Fprintf(r, "%s %d %d\n", cand, token, highest)
		r.Close()
		os.Exit(3)
	}
	if _, err := fmt.Fprintf(f, "%s %d\n", cand, token); err != nil {
		fail(err)
	}
	if err := f.Sync(); err != nil {
		fail(err)
	}
}

// highestToken reads every line "CANDIDATE TOKEN" of f from its start.
func highestToken(f *os.File) (uint64, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	var highest uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			return 0, fmt.Errorf("bad line %q", sc.Text())
		}
		t, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bad line %q", sc.Text())
		}
		highest = max(highest, t)
	}
	return highest, sc.Err()
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "fencedappend: %v\n", err)
	os.Exit(1)
}
