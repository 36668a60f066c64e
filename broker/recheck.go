package broker

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/qtb-dev/qlik-token-broker/cache"
)

// With Redis, a token stays in L1 for its own life; L1TTL only bounds how
// long it is served without asking Redis again. That check decides what a
// Redis outage, a flush or a failover costs: an answer updates or confirms
// the L1 copy, no answer leaves it served (nothing is minted for a user
// holding a valid token), and an empty key is healed from the L1 copy
// rather than by minting (a FLUSHALL, or a failover that lost the write).

// checkDue reports whether c is due to be checked against Redis at now and
// claims the check: of the requests that find it due, one asks Redis while
// the others go on serving the copy. The claim moves the next check every
// ahead, whatever the check finds. It costs no allocation (the L1 hit path).
func (c *cached) checkDue(now time.Time, every time.Duration) bool {
	at := c.checkAt.Load()
	if now.UnixNano() < at {
		return false
	}
	return c.checkAt.CompareAndSwap(at, now.Add(every).UnixNano())
}

// recheck asks Redis about the L1 copy c and returns the token to serve, or
// nil when the copy must not be served any more (its user logged out).
func (b *Broker) recheck(ctx context.Context, k keys, c *cached, now time.Time) *cached {
	cur, found := b.lookupShared(ctx, k.token, true)
	switch found {
	case sharedHit:
		if cur.tok.AccessToken == c.tok.AccessToken || cur.tok.ExpiresAt.Before(c.tok.ExpiresAt) {
			// The same token, or an older one another replica put back
			// while ours was being minted: ours stays.
			return c
		}
		b.putL1(k.token, cur) // a refresh or a reissue elsewhere
		return cur
	case sharedAbsent:
		if b.healsHeld(now) {
			return c // served; put back once checked (suspect.go)
		}
		switch out, sure := b.loggedOut(ctx, k.token); {
		case out:
			b.deleteL1(k.token)
			return nil
		case !sure:
			return c
		}
		b.reseed(ctx, k.token, c, now)
		b.healSoon(now)
		return c
	}
	// Redis did not answer (error, breaker open), or holds a value this
	// replica cannot read: the copy is still valid.
	return c
}

// loggedOut reports whether the user behind the token key logged out
// lately, in which case an empty key must not be healed from the L1 copy:
// Redis holds the logout's tombstone (logout.go) for as long as a fill in
// flight could outlive the logout. A replica that missed the invalidation
// broadcast for an older logout could still put a revoked token back; the
// tenant then refuses it and the re-ask or the proxy's retry replaces it.
// When Redis cannot say, or a logout of the user made here is still being
// retried (logout.go), the copy is served but not healed: sure is false.
func (b *Broker) loggedOut(ctx context.Context, tokenKey string) (out, sure bool) {
	if b.pendingLogouts.has(tokenKey) {
		// This replica's logout of the user has not reached Redis yet;
		// its retry deletes (and revokes) whatever Redis then holds, so
		// nothing may be put back before it has run.
		return false, false
	}
	_, err := b.shared.Get(ctx, keys{token: tokenKey}.logout())
	switch {
	case err == nil:
		return true, true
	case errors.Is(err, cache.ErrMiss):
		return false, true
	}
	return false, false
}

// healWorkers is how many tokens healSoon puts back at once.
const healWorkers = 16

// healSoon starts putting back every token this replica holds, at most
// once per L1TTL: a key missing from Redis while L1 holds it almost always
// means Redis lost them all (a FLUSHALL, a failover that lost writes, a
// restart without persistence), and waiting for each one's own check would
// leave the other replicas minting for users this one holds meanwhile.
func (b *Broker) healSoon(now time.Time) {
	next := b.nextHeal.Load()
	if now.UnixNano() < next || !b.nextHeal.CompareAndSwap(next, now.Add(b.l1TTL).UnixNano()) {
		return
	}
	b.refreshMu.Lock() // b.bg.Add must not race Close's Wait
	defer b.refreshMu.Unlock()
	if b.bgCtx.Err() != nil {
		return
	}
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		keys, values := b.l1.Snapshot()
		// Several at a time: one by one, each a tombstone GET and a SET
		// NX, 100k tokens would take ~100 s on a 0.5 ms network, and every
		// request meanwhile that reaches a replica not holding the user's
		// token mints.
		var healed atomic.Int64
		var g errgroup.Group
		g.SetLimit(healWorkers)
		for i, key := range keys {
			if b.bgCtx.Err() != nil || b.healsHeld(b.now()) {
				break
			}
			if values[i].verified.Load() != b.l1Gen.Load() {
				continue // suspect: put back only once checked (suspect.go)
			}
			g.Go(func() error {
				ctx, cancel := context.WithTimeout(b.bgCtx, b.fetchTimeout)
				defer cancel()
				if out, sure := b.loggedOut(ctx, key); sure && !out && b.reseed(ctx, key, values[i], b.now()) {
					healed.Add(1)
				}
				return nil
			})
		}
		_ = g.Wait()
		if b.bgCtx.Err() != nil {
			return
		}
		b.log.Info("put the tokens held in L1 back into Redis, which had lost one", "held", len(keys), "stored", healed.Load())
	}()
}

// seeder stores a value only where there is none, so a replica healing
// Redis never overwrites a token another replica has stored meanwhile.
// *cache.Redis implements it; a Shared that does not is healed with Set.
type seeder interface {
	SetIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)
}

var _ seeder = (*cache.Redis)(nil)

// reseed puts the L1 copy c back into Redis for the rest of its servable
// life, sealed as usual, unless Redis holds a token for the key, and
// reports whether it stored it. Failures are counted and otherwise
// ignored: the copy is served anyway, and the next check tries again.
func (b *Broker) reseed(ctx context.Context, key string, c *cached, now time.Time) bool {
	ttl := b.cacheTTL(c.tok, now)
	if ttl <= 0 {
		return false
	}
	value := b.seal(key, c.tok)
	stored := true
	var err error
	if s, ok := b.shared.(seeder); ok {
		stored, err = s.SetIfAbsent(ctx, key, value, ttl)
	} else {
		err = b.shared.Set(ctx, key, value, ttl)
	}
	if err != nil {
		b.redisError(ctx, "set", err)
		return false
	}
	return stored
}
