package qliktest

import (
	"sync"
	"time"
)

// Qlik's Tier-2 quota as documented (shared/qlik-api.md §2, §11): a rate
// per minute "evaluated over a 5-minute window to support bursts", so any
// five minutes may hold five minutes' worth of calls however they bunch; a
// call beyond it gets 429 with Retry-After, and until then every call of
// the tier gets 429 too. Calls turned away are not counted. The fake keeps
// one count per tenant: whom Qlik counts an impersonation call against is
// UNCONFIRMED (§2), and the broker's calls all come from one client. Admin
// writes join the same count, the pessimistic reading: Qlik counts them
// against the admin client's bot user, which may or may not be the user
// token calls are counted against. The tenant-wide "user limit × users ×
// 0.5" limit is not modelled.
//
// A time-compression factor shrinks the window and the token lifetime
// together, so a simulated day runs in minutes with the same ratio of
// token life to quota: at factor c, a simulated minute is 1/c of the
// tenant clock's.

// QuotaWindow is the window Qlik evaluates Tier-2 rates over.
const QuotaWindow = 5 * time.Minute

// WithTier2Quota turns on the Tier-2 quota model for /oauth/token,
// /oauth/revoke and the admin writes section 9 puts in Tier 2 (POST
// /api/v1/users, PATCH /api/v1/users/{id}, POST /api/v1/groups), all in
// the one count: perMinute calls a (simulated) minute, evaluated over a
// sliding QuotaWindow. Qlik's Tier 2 is 100. 0 (the default) turns it off.
// It is independent of WithRateLimit; with both, a call must pass both.
func WithTier2Quota(perMinute int) Option {
	return func(t *Tenant) { t.quota.perWindow = max(perMinute, 0) * int(QuotaWindow/time.Minute) }
}

// WithCompression compresses time by factor (> 1; other values mean 1):
// the quota's window and the token lifetime (WithTokenLifetime's or the
// default 6h) are divided by it, whatever order the options come in. A
// lifetime keeps whole seconds and at least one.
func WithCompression(factor float64) Option {
	return func(t *Tenant) {
		if factor > 1 {
			t.quota.compression = factor
		}
	}
}

// compress applies WithCompression once every option is in.
func (t *Tenant) compress() {
	c := t.quota.compression
	if c == 0 {
		c = 1
	}
	t.quota.window = time.Duration(float64(QuotaWindow) / c)
	t.lifetime = max(time.Duration(float64(t.lifetime)/c).Truncate(time.Second), time.Second)
}

// QuotaUse is what the quota model has seen.
type QuotaUse struct {
	// Admitted and Rejected count Tier-2 calls let through and answered
	// 429 by the quota.
	Admitted, Rejected int
	// InWindow is how many admitted calls are in the window now; Limit is
	// how many it holds.
	InWindow, Limit int
	// BlockedUntil is when the current 429 block ends; zero when the tier
	// is not blocked.
	BlockedUntil time.Time
}

// QuotaUse reports the quota model's counts at the tenant clock's now.
func (t *Tenant) QuotaUse() QuotaUse {
	return t.quota.use(t.now())
}

// quota is the Tier-2 quota model.
type quota struct {
	perWindow   int           // 0: off
	window      time.Duration // QuotaWindow, compressed
	compression float64

	mu                 sync.Mutex
	accepted           []time.Time // admitted calls in the window, oldest first
	blockedUntil       time.Time
	admitted, rejected int
}

// admit records one Tier-2 call at now, or returns how long the tier is
// blocked (whole seconds, at least one: Retry-After's unit) and false.
func (q *quota) admit(now time.Time) (retryAfter time.Duration, ok bool) {
	if q.perWindow == 0 {
		return 0, true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if now.Before(q.blockedUntil) {
		q.rejected++
		return q.blockedUntil.Sub(now), false
	}
	q.slide(now)
	if len(q.accepted) >= q.perWindow {
		wait := q.accepted[0].Add(q.window).Sub(now)
		wait = max(((wait+time.Second-1)/time.Second)*time.Second, time.Second)
		q.blockedUntil = now.Add(wait)
		q.rejected++
		return wait, false
	}
	q.accepted = append(q.accepted, now)
	q.admitted++
	return 0, true
}

// slide drops the calls that have left the window at now.
func (q *quota) slide(now time.Time) {
	cutoff := now.Add(-q.window)
	drop := 0
	for drop < len(q.accepted) && !q.accepted[drop].After(cutoff) {
		drop++
	}
	if drop > 0 {
		q.accepted = append(q.accepted[:0], q.accepted[drop:]...)
	}
}

func (q *quota) use(now time.Time) QuotaUse {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.slide(now)
	u := QuotaUse{Admitted: q.admitted, Rejected: q.rejected, InWindow: len(q.accepted), Limit: q.perWindow}
	if now.Before(q.blockedUntil) {
		u.BlockedUntil = q.blockedUntil
	}
	return u
}
