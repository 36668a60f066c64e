package broker

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// userLimiter keeps a token bucket per identity. Buckets that have refilled
// completely are indistinguishable from new ones, so they are dropped when
// the map grows: memory is bounded by the identities active recently.
type userLimiter struct {
	mu      sync.Mutex
	rate    rate.Limit
	burst   int
	now     func() time.Time
	buckets map[string]*rate.Limiter
	sweepAt int
}

func newUserLimiter(perSecond float64, burst int, now func() time.Time) *userLimiter {
	return &userLimiter{rate: rate.Limit(perSecond), burst: burst, now: now,
		buckets: make(map[string]*rate.Limiter), sweepAt: 1024}
}

// allow takes one token from key's bucket, or says how long until one is
// there.
func (l *userLimiter) allow(key string) (time.Duration, bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.sweepAt {
			l.sweep(now)
		}
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[key] = b
	}
	if b.AllowN(now, 1) {
		return 0, true
	}
	r := b.ReserveN(now, 1)
	wait := r.DelayFrom(now)
	r.CancelAt(now)
	return max(wait, time.Second), false
}

// sweep drops full buckets, and grows the threshold when most are in use.
func (l *userLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, k)
		}
	}
	l.sweepAt = max(1024, 2*len(l.buckets))
}
