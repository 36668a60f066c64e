package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// serverCPUs, when not empty, is the taskset CPU list every server process
// and redis-server is started on (-pin). Set once, before anything starts.
var serverCPUs string

// pinCPUs splits the machine for -pin: servers and redis-server on CPU 0,
// the generator on the others. On two cores each side then has its own
// core, so neither preempts the other: the latency of one side is not the
// other's scheduling. It pins every thread of this process (threads made
// later inherit the mask) and sets GOMAXPROCS to the generator's CPUs
// unless -gen-procs says otherwise.
func pinCPUs(genProcs int) (gen []int, err error) {
	n := runtime.NumCPU()
	if n < 2 {
		return nil, fmt.Errorf("-pin needs at least 2 CPUs, have %d", n)
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return nil, fmt.Errorf("-pin starts servers with taskset (Debian package util-linux): %w", err)
	}
	var set unix.CPUSet
	for cpu := 1; cpu < n; cpu++ {
		set.Set(cpu)
		gen = append(gen, cpu)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("pin thread %d: %w", tid, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if genProcs <= 0 {
		runtime.GOMAXPROCS(len(gen))
	}
	serverCPUs = "0"
	return gen, nil
}

// command is exec.Command, under taskset when servers are pinned.
func command(bin string, args ...string) *exec.Cmd {
	if serverCPUs == "" {
		return exec.Command(bin, args...)
	}
	return exec.Command("taskset", append([]string{"-c", serverCPUs, bin}, args...)...)
}
