package session

import (
	"crypto/sha256"
	"sync"
	"time"
)

// verified remembers tokens that passed Verify, keyed by their SHA-256, so
// a browser asking again with the same session token skips the signature
// and claim checks. An entry lives until the token's exp (plus leeway) or
// the configured TTL, whichever comes first; rejections are never cached.
// The cost: a key removed from a JWKS keeps accepting tokens already seen
// for up to the TTL.
type verified struct {
	mu      sync.RWMutex
	ttl     time.Duration
	max     int
	entries map[[sha256.Size]byte]verifiedEntry
}

type verifiedEntry struct {
	id    Identity
	until time.Time
}

func newVerified(ttl time.Duration, max int) *verified {
	if ttl <= 0 {
		return nil
	}
	if max <= 0 {
		max = 10_000
	}
	return &verified{ttl: ttl, max: max, entries: make(map[[sha256.Size]byte]verifiedEntry)}
}

func (v *verified) get(key [sha256.Size]byte, now time.Time) (Identity, bool) {
	v.mu.RLock()
	e, ok := v.entries[key]
	v.mu.RUnlock()
	if !ok || !now.Before(e.until) {
		return Identity{}, false
	}
	return e.id, true
}

func (v *verified) put(key [sha256.Size]byte, id Identity, now time.Time, leeway time.Duration) {
	until := id.ExpiresAt.Add(leeway)
	if ttlEnd := now.Add(v.ttl); ttlEnd.Before(until) {
		until = ttlEnd
	}
	if !now.Before(until) {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.entries) >= v.max {
		for k, e := range v.entries {
			if !now.Before(e.until) {
				delete(v.entries, k)
			}
		}
		if len(v.entries) >= v.max {
			clear(v.entries) // all live: start over rather than grow
		}
	}
	v.entries[key] = verifiedEntry{id: id, until: until}
}
