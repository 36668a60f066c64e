package qliktest

import "time"

const rateWindow = time.Minute

// admit lets one Tier-2 request through WithRateLimit's limit and then the
// quota model (quota.go), or returns how long to wait and false.
func (t *Tenant) admit() (retryAfter time.Duration, ok bool) {
	if wait, ok := t.admitRate(); !ok {
		return wait, false
	}
	return t.quota.admit(t.now())
}

// admitRate records one Tier-2 request against a sliding one-minute window on the
// tenant clock. When the window is full it returns how long until the oldest
// request leaves it, and false; rejected requests are not recorded, so a
// client that waits Retry-After gets through.
func (t *Tenant) admitRate() (retryAfter time.Duration, ok bool) {
	if t.rateLimit == 0 {
		return 0, true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	cutoff := now.Add(-rateWindow)
	drop := 0
	for drop < len(t.rateWindow) && !t.rateWindow[drop].After(cutoff) {
		drop++
	}
	t.rateWindow = append(t.rateWindow[:0], t.rateWindow[drop:]...)
	if len(t.rateWindow) >= t.rateLimit {
		return max(t.rateWindow[0].Sub(cutoff), time.Second), false
	}
	t.rateWindow = append(t.rateWindow, now)
	return 0, true
}
