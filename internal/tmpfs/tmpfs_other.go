//go:build !linux

package tmpfs

import "fmt"

// ErrNotPermitted: this process may not mount (here: not Linux).
var ErrNotPermitted = fmt.Errorf("tmpfs: mounting is not permitted here")

// Mount fails: small filesystems of their own need Linux.
func Mount(dir string, size int64) error {
	return fmt.Errorf("%w: tmpfs needs Linux (mount %s)", ErrNotPermitted, dir)
}

// Resize fails: nothing can be mounted here.
func Resize(dir string, size int64) error { return Mount(dir, size) }

// Unmount fails: nothing can be mounted here.
func Unmount(dir string) error { return Mount(dir, 0) }

// Fill appends to the file at path until its filesystem is full (or limit
// bytes were written, if limit > 0).
func Fill(path string, limit int64) (int64, error) { return fill(path, limit) }
