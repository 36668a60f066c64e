package redistest

import "syscall"

// sysProcAttr kills redis-server when the test binary dies without running
// its cleanups (a timeout panic, SIGKILL).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
