package tmpfs

import (
	"errors"
	"os"
	"syscall"
)

func fill(path string, limit int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = 0xa5
	}
	var total int64
	for limit <= 0 || total < limit {
		chunk := buf
		if limit > 0 && limit-total < int64(len(chunk)) {
			chunk = chunk[:limit-total]
		}
		n, err := f.Write(chunk)
		total += int64(n)
		if err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				// Write whatever still fits, down to a byte.
				for size := len(chunk) / 2; size > 0; size /= 2 {
					for {
						n, err := f.Write(chunk[:size])
						total += int64(n)
						if err != nil {
							break
						}
					}
				}
				return total, f.Sync()
			}
			return total, err
		}
	}
	return total, f.Sync()
}
