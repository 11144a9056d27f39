//go:build linux

// Package tmpfs mounts small tmpfs filesystems for tests and the fault
// harness that need a data dir which can really run out of space, and grows
// them again. Mounting needs root (CAP_SYS_ADMIN); callers skip cleanly when
// Mount fails with ErrNotPermitted.
package tmpfs

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrNotPermitted: this process may not mount (not root, or a container
// without CAP_SYS_ADMIN).
var ErrNotPermitted = errors.New("tmpfs: mounting is not permitted here")

// Mount mounts a tmpfs of size bytes on dir (an existing, empty directory).
func Mount(dir string, size int64) error {
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			return fmt.Errorf("%w: mount tmpfs on %s: %v", ErrNotPermitted, dir, err)
		}
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// Resize changes the size of the tmpfs mounted on dir (remount), keeping
// its files. Shrinking below what the files take fails.
func Resize(dir string, size int64) error {
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT, fmt.Sprintf("size=%d", size)); err != nil {
		return fmt.Errorf("resize tmpfs on %s to %d bytes: %w", dir, size, err)
	}
	return nil
}

// Unmount unmounts dir, detaching it lazily if a process still holds a
// file in it.
func Unmount(dir string) error {
	err := syscall.Unmount(dir, 0)
	if errors.Is(err, syscall.EBUSY) {
		err = syscall.Unmount(dir, syscall.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// Fill appends to the file at path until its filesystem is full (or limit
// bytes were written, if limit > 0) and returns how many bytes it wrote. The
// file stays until the caller removes it.
func Fill(path string, limit int64) (int64, error) {
	return fill(path, limit)
}
