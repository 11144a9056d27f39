package node

import "syscall"

func syscallENOSPC() error { return syscall.ENOSPC }
