//go:build !linux

package redistest

import "syscall"

// sysProcAttr has no parent-death signal to offer off Linux; Cleanup stops
// the server.
func sysProcAttr() *syscall.SysProcAttr { return nil }
