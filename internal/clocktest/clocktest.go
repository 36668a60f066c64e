// Package clocktest provides the one fake clock the project's tests share: a
// time that moves only when a test moves it, so expiry, skew, cooldowns and
// refresh-ahead are tested without sleeping.
//
// It is for _test.go files only. It imports no project package, so any
// package's tests may use it; non-test code must not (the service packages
// import no other project package).
package clocktest

import (
	"sync"
	"time"
)

// Clock is a settable clock. Pass its Now method wherever code takes a
// `func() time.Time`. It is safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a Clock that reads t0 until it is moved.
func New(t0 time.Time) *Clock {
	return &Clock{t: t0}
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d (backward when d is negative).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
