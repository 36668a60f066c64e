package broker

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
)

// Suspect L1 copies.
//
// Invalidations travel on Redis pub/sub, at most once: those published
// while a replica's subscription was down (Redis killed or restarted, a
// failover, the network) are lost, and one of them may have been a logout
// at another replica that revoked a token this replica holds in L1. When
// the subscription comes back (cache.InvalidateAll), dropping L1 would make
// every holder cost a token call whenever Redis came back empty (restart
// without persistence, a flush). Instead every copy held then becomes
// suspect: l1Gen moves on, and a copy whose verified generation is behind
// it is not served before it is checked, once per copy, concurrent requests
// for the user sharing the check:
//
//   - Redis holds the same token and no logout tombstone stands: trusted,
//     as any L1 check would (confirmed).
//   - Redis holds a newer token: that one is served (replaced).
//   - the user's logout tombstone stands: the copy is dropped and the
//     request fills as on a miss (logged_out).
//   - otherwise (Redis lacks the key, holds an older token or cannot be
//     read) the tenant is asked with the re-ask's check, one GET
//     /api/v1/users/me with the token (reask.go), which is not a token
//     call:
//   - it takes the token: served, and put back into Redis with SET NX
//     unless a logout tombstone stands or a logout of the user made here
//     is still being retried (accepted);
//   - 401 or 403: evicted from L1 and, when Redis holds it, from Redis and
//     the other replicas; the request mints a new one inside its budget
//     (refused);
//   - no answer (network, 429, 5xx): served but not put back by this check
//     (unchecked); it is not checked again, so a later L1 check may put it
//     back as it would any copy. The tenant checks the token on every use
//     anyway, and a page it refuses re-asks (reask.go); refusing service
//     while the tenant is unreachable would fail users who hold valid
//     tokens, and checking on every request would hammer a tenant in
//     trouble.
//
// Copies put into L1 after the subscription came back are not suspect.

// suspectAll makes every L1 copy suspect: the invalidation subscription was
// re-established and may have missed some. Redis is back, so logouts whose
// Redis steps are being retried go now, and held heals may go again.
func (b *Broker) suspectAll() {
	b.l1Gen.Add(1)
	b.redisFailed.Store(false)
	b.pendingLogouts.wake()
}

// healHoldAfterError is how long after a failed Redis operation an L1 copy
// is not put back into Redis unchecked (recheck.go), unless the
// invalidation subscription comes back first. Redis answering again does
// not say that the subscription is back (go-redis re-subscribes on its
// own, some time later): until it is, a logout made meanwhile at another
// replica may be unknown here, and a copy put back in that gap would be
// taken for a good one once its check came (Redis holding the same token).
// A subscription that never dropped sends no notice, hence the time limit;
// the open breaker's refusals extend it (an outage longer than the limit)
// but do not start it, so those left after the subscription came back do
// not hold the copies checked since.
const healHoldAfterError = 10 * time.Second

// holdHeals records a failed Redis operation: heals of unchecked copies
// wait.
func (b *Broker) holdHeals(err error) {
	if !errors.Is(err, cache.ErrUnavailable) {
		b.redisFailed.Store(true)
	}
	b.healHold.Store(b.now().Add(healHoldAfterError).UnixNano())
}

// healsHeld reports whether an L1 copy may not be put back unchecked now.
func (b *Broker) healsHeld(now time.Time) bool {
	return b.redisFailed.Load() && now.UnixNano() < b.healHold.Load()
}

// checkSuspect checks the suspect L1 copy c of key k (see above) and
// returns the token to serve, or nil when the request must fill.
func (b *Broker) checkSuspect(ctx context.Context, up *upstream, k keys, c *cached, gen uint32) *cached {
	ch := b.verifying.DoChan(k.token, func() (any, error) {
		// Detached, as a fill is: the first caller going away must not
		// fail the others waiting for this check.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(b.fetchTimeout, reaskTimeout))
		defer cancel()
		got, result := b.verifyCopy(cctx, up, k, c, gen)
		b.m.SuspectChecks.WithLabelValues(result).Inc()
		return got, nil
	})
	select {
	case r := <-ch:
		got, _ := r.Val.(*cached)
		return got
	case <-ctx.Done():
		return nil // the fill that follows fails on the same ctx
	}
}

// verifyCopy decides about c, checked in generation gen, and says which
// case it was (metrics.Suspect*).
func (b *Broker) verifyCopy(ctx context.Context, up *upstream, k keys, c *cached, gen uint32) (*cached, string) {
	cur, found := b.lookupShared(ctx, k.token, false)
	out, sure := false, false
	if found != sharedFailed {
		out, sure = b.loggedOut(ctx, k.token)
	}
	same := found == sharedHit && cur.tok.AccessToken == c.tok.AccessToken
	switch {
	case out:
		b.dropL1Copy(k.token, c)
		return nil, metrics.SuspectLoggedOut
	case same && sure:
		c.verified.Store(gen)
		return c, metrics.SuspectConfirmed
	case found == sharedHit && cur.tok.ExpiresAt.After(c.tok.ExpiresAt):
		b.dropL1Copy(k.token, c)
		b.putL1(k.token, cur) // read after the subscription came back: not suspect
		return cur, metrics.SuspectReplaced
	}
	if found == sharedFailed {
		// The subscription came back before this replica's Redis client
		// did: ask Redis again at the next request, to put the copy back.
		c.checkAt.Store(b.now().UnixNano())
	}
	status, err := b.usersMe.ask(ctx, up.tenant.URL, c.tok.AccessToken)
	switch {
	case err != nil || status == http.StatusTooManyRequests || status >= 500:
		b.log.WarnContext(ctx, "could not check a token held while invalidations could not arrive; serving it unchecked",
			"tenant", up.tenant.ID, "status", status, "err", err)
		c.verified.Store(gen)
		return c, metrics.SuspectUnchecked
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		b.log.InfoContext(ctx, "the tenant refused a token held while invalidations could not arrive; evicting it", "tenant", up.tenant.ID)
		b.dropL1Copy(k.token, c)
		if same {
			_ = b.dropShared(ctx, k.token) // counted; the fill that follows goes on
		}
		return nil, metrics.SuspectRefused
	}
	c.verified.Store(gen)
	if found == sharedAbsent && sure {
		b.reseed(ctx, k.token, c, b.now())
	}
	return c, metrics.SuspectAccepted
}

// dropL1Copy removes c from L1 unless it has been replaced meanwhile.
func (b *Broker) dropL1Copy(key string, c *cached) {
	if cur, ok := b.getL1(key); ok && cur == c {
		b.deleteL1(key)
	}
}

// checkTransport carries the checks of suspect copies to the tenants.
func checkTransport() http.RoundTripper {
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return http.DefaultTransport
	}
	t = t.Clone()
	t.ResponseHeaderTimeout = reaskTimeout
	return t
}
