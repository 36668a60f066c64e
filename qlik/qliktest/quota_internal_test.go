package qliktest

import (
	"testing"
	"time"
)

// TestQuotaWindow walks the Tier-2 window: 2 a minute over 5 minutes is 10
// calls in any 5 minutes, however they bunch; the 11th is refused with
// Retry-After until the oldest leaves, and everything is refused until then.
func TestQuotaWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	q := &quota{perWindow: 2 * 5, window: QuotaWindow}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	admit := func(d time.Duration) (time.Duration, bool) { t.Helper(); return q.admit(at(d)) }

	// A burst of 10 at t=0 and t=1m: allowed, the window absorbs it.
	for i := range 10 {
		if _, ok := admit(time.Duration(i/5) * time.Minute); !ok {
			t.Fatalf("call %d of the burst refused", i)
		}
	}
	// Full until t=5m, when the five calls of t=0 leave: 5m - 2m0.5s =
	// 2m59.5s, rounded up to whole seconds.
	if wait, ok := admit(2*time.Minute + 500*time.Millisecond); ok || wait != 3*time.Minute {
		t.Fatalf("11th call = %v, %v; want refused for 3m", wait, ok)
	}
	// Blocked until 5m0.5s: every call is refused, with what is left.
	if wait, ok := admit(4 * time.Minute); ok || wait != time.Minute+500*time.Millisecond {
		t.Fatalf("call while blocked = %v, %v; want refused for 1m0.5s", wait, ok)
	}
	// The block ends at 5m0.5s; the t=0 calls are gone, five slots are free.
	for i := range 5 {
		if _, ok := admit(5*time.Minute + 500*time.Millisecond); !ok {
			t.Fatalf("call %d after the block refused", i)
		}
	}
	if _, ok := admit(5*time.Minute + 500*time.Millisecond); ok {
		t.Fatal("a 6th call after the block was let through: the t=1m calls are still in the window")
	}
	u := q.use(at(5*time.Minute + 500*time.Millisecond))
	if u.Admitted != 15 || u.Rejected != 3 || u.InWindow != 10 || u.Limit != 10 || u.BlockedUntil.IsZero() {
		t.Fatalf("use = %+v; want 15 admitted, 3 rejected, 10 of 10 in the window, blocked", u)
	}
	// Rejected calls are not counted: after the block the window is what
	// was admitted.
	if u := q.use(at(7 * time.Minute)); u.InWindow != 5 || !u.BlockedUntil.IsZero() {
		t.Fatalf("use at 7m = %+v; want the 5 calls of 5m0.5s, not blocked", u)
	}
}

func TestQuotaOff(t *testing.T) {
	q := &quota{}
	for range 1000 {
		if _, ok := q.admit(time.Now()); !ok {
			t.Fatal("a quota that is off refused a call")
		}
	}
}

// TestCompression divides the window and the token lifetime by the factor,
// in whatever order the options come.
func TestCompression(t *testing.T) {
	for _, opts := range [][]Option{
		{WithCompression(60), WithTokenLifetime(6 * time.Hour), WithTier2Quota(100)},
		{WithTier2Quota(100), WithTokenLifetime(6 * time.Hour), WithCompression(60)},
	} {
		tn := &Tenant{lifetime: 6 * time.Hour}
		for _, o := range opts {
			o(tn)
		}
		tn.compress()
		if tn.lifetime != 6*time.Minute || tn.quota.window != 5*time.Second || tn.quota.perWindow != 500 {
			t.Fatalf("compressed 60x: lifetime %v, window %v, %d per window; want 6m, 5s, 500",
				tn.lifetime, tn.quota.window, tn.quota.perWindow)
		}
	}
	tn := &Tenant{lifetime: 6 * time.Hour}
	tn.compress()
	if tn.lifetime != 6*time.Hour || tn.quota.window != QuotaWindow {
		t.Fatalf("uncompressed: lifetime %v, window %v", tn.lifetime, tn.quota.window)
	}
}
