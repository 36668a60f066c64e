package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// A logout must revoke the user's token at the tenant whatever Redis does,
// say truthfully whether it did, and leave no copy that a replica could
// serve afterwards:
//
//   - the token this replica holds (L1) is revoked even when Redis is slow
//     or down; Redis is given logoutRedisTimeout, no more;
//   - what could not be reached in Redis (the shared copy, the other
//     replicas' L1 through the invalidation) is retried in the background
//     until Redis answers (at once when the invalidation subscription
//     comes back), and until then this replica puts no token of the user
//     back into Redis (pendingLogouts); a replica whose invalidation
//     subscription comes back checks every L1 copy before serving it
//     (suspect.go), since messages sent meanwhile are lost;
//   - a fill in flight when the logout arrives does not cache or serve its
//     token: the logout leaves a mark (a sequence number in this process, a
//     random tombstone in Redis for the other replicas) that the fill
//     checks after storing, and the fill then removes and revokes its
//     token and answers errLoggedOut.
//
// The answer is 204 when every token found was revoked; 502 when a
// revocation failed; 503 logout_incomplete when Redis could not be read
// and nothing was found here to revoke.

// logoutRedisTimeout bounds each Redis step of a logout, so a paused or
// dead Redis delays the revocation by at most this much.
const logoutRedisTimeout = 2 * time.Second

// logoutRetryFor bounds the background retries of a logout's Redis steps.
const logoutRetryFor = 15 * time.Minute

// logoutKey is qtb:logout:<tenant>:{<hash>}: the tombstone of the user's
// last logout, in the user's hash slot.
func (k keys) logout() string { return "qtb:logout:" + k.token[len("qtb:tok:"):] }

// logoutMark is what a fill reads before calling the tenant, to tell after
// storing whether a logout happened meanwhile.
type logoutMark struct {
	local  uint64
	shared string
}

func (b *Broker) logoutMark(ctx context.Context, k keys) logoutMark {
	m := logoutMark{}
	m.local, _ = b.logouts.Get(k.token)
	if b.shared != nil {
		if raw, err := b.shared.Get(ctx, k.logout()); err == nil {
			m.shared = string(raw)
		}
	}
	return m
}

// loggedOutSince reports whether the user logged out after mark was read,
// here or at another replica.
func (b *Broker) loggedOutSince(ctx context.Context, k keys, mark logoutMark) bool {
	if cur, _ := b.logouts.Get(k.token); cur != mark.local {
		return true
	}
	if b.shared != nil {
		raw, err := b.shared.Get(ctx, k.logout())
		if err == nil && string(raw) != mark.shared {
			return true
		}
	}
	return false
}

// discard undoes a fill the user logged out during: the token leaves both
// tiers and is revoked; the waiters get errLoggedOut.
func (b *Broker) discard(ctx context.Context, up *upstream, k keys, tok qlik.Token) error {
	if c, ok := b.getL1(k.token); ok && c.tok.AccessToken == tok.AccessToken {
		b.deleteL1(k.token)
	}
	if b.shared != nil {
		if c, err := b.sharedToken(ctx, k.token); err == nil && c == tok.AccessToken {
			_ = b.dropShared(ctx, k.token) // counted
		}
	}
	if err := up.revoke(ctx, tok.AccessToken); err != nil {
		b.log.WarnContext(ctx, "revoking a token fetched during a logout failed", "tenant", up.tenant.ID, "err", err)
	}
	return errLoggedOut
}

// Evict removes the identity's cached tokens from every tier (and every
// replica's L1) and revokes them at the tenant. With nothing cached it
// succeeds without calling the tenant. It also forgets a remembered
// refusal of the user.
func (b *Broker) Evict(ctx context.Context, id session.Identity) error {
	up, user, err := b.resolve(ctx, id)
	if err != nil {
		return err
	}
	k := b.keysFor(up, user)
	_ = b.logouts.Set(k.token, b.logoutSeq.Add(1), 2*b.fetchTimeout+b.leaseTTL)
	b.flight.Forget(k.token)
	b.refused.Delete(k.token)
	b.reissued.Delete(k.token)

	var found []string
	if c, ok := b.getL1(k.token); ok {
		found = append(found, c.tok.AccessToken)
	}
	b.deleteL1(k.token)
	var redisErr error
	if b.shared != nil {
		rctx, cancel := context.WithTimeout(ctx, logoutRedisTimeout)
		redisErr = b.evictShared(rctx, k, &found)
		cancel()
		if redisErr != nil {
			b.retryLogout(up, k, found)
		}
	}
	// The caller going away must not stop the revocation.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
	defer cancel()
	var errs []error
	for _, access := range found {
		if err := up.revoke(rctx, access); err != nil {
			errs = append(errs, err) // up.revoke wraps in ErrUpstream
		}
	}
	switch {
	case len(errs) > 0:
		return errors.Join(errs...)
	case redisErr != nil && len(found) == 0:
		return fmt.Errorf("%w: %w", errLogoutIncomplete, redisErr)
	}
	return nil
}

// evictShared leaves the logout's tombstone, adds the token Redis holds to
// found, deletes it and tells the other replicas. It returns the first
// Redis failure.
func (b *Broker) evictShared(ctx context.Context, k keys, found *[]string) error {
	var nonce [12]byte
	_, _ = rand.Read(nonce[:])
	tombErr := b.shared.Set(ctx, k.logout(), []byte(base64.RawURLEncoding.EncodeToString(nonce[:])), 2*b.fetchTimeout+b.leaseTTL)
	if tombErr != nil {
		b.redisError(ctx, "set", tombErr)
	}
	access, err := b.sharedToken(ctx, k.token)
	if err != nil {
		return err
	}
	if access != "" && !slices.Contains(*found, access) {
		*found = append(*found, access)
	}
	if err := b.dropShared(ctx, k.token); err != nil {
		return err
	}
	if err := b.forgetRefusal(ctx, k); err != nil {
		return err
	}
	return tombErr
}

// retryLogout finishes a logout's Redis steps in the background once Redis
// answers: whatever token Redis still holds for the user is revoked (it
// was stored before the logout: nothing can store one while Redis is
// down), deleted, and the replicas told.
func (b *Broker) retryLogout(up *upstream, k keys, revoked []string) {
	b.pendingLogouts.add(k.token)
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		defer b.pendingLogouts.done(k.token)
		deadline := time.Now().Add(logoutRetryFor)
		for delay := 250 * time.Millisecond; time.Now().Before(deadline); delay = min(2*delay, 15*time.Second) {
			t := time.NewTimer(delay)
			select {
			case <-b.bgCtx.Done():
				t.Stop()
				return
			case <-b.pendingLogouts.redisBack():
				t.Stop()
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(b.bgCtx, logoutRedisTimeout)
			found := slices.Clone(revoked)
			err := b.evictShared(ctx, k, &found)
			cancel()
			if err != nil {
				continue
			}
			for _, access := range found[len(revoked):] {
				rctx, cancel := context.WithTimeout(b.bgCtx, b.fetchTimeout)
				if err := up.revoke(rctx, access); err != nil {
					b.log.Warn("revoking a token left in Redis by a logout failed", "tenant", up.tenant.ID, "err", err)
				}
				cancel()
			}
			b.log.Info("logout finished in Redis after an outage", "tenant", up.tenant.ID)
			return
		}
		b.log.Error("logout could not reach Redis in time; a replica may serve the token until it expires from L1", "tenant", up.tenant.ID)
	}()
}

// sharedToken returns the access token Redis holds under key ("" for
// none, or one that cannot be read), or Redis's failure.
func (b *Broker) sharedToken(ctx context.Context, key string) (string, error) {
	raw, err := b.shared.Get(ctx, key)
	switch {
	case errors.Is(err, cache.ErrMiss):
		return "", nil
	case err != nil:
		b.redisError(ctx, "get", err)
		return "", err
	}
	if b.keyring != nil {
		if raw, err = b.keyring.Open([]byte(key), raw); err != nil {
			return "", nil
		}
	}
	tok, err := decodeToken(raw)
	if err != nil {
		return "", nil
	}
	return tok.AccessToken, nil
}

// dropShared deletes key from Redis and, once it is gone, tells every
// replica to drop it from L1. Failures are counted; a failed delete is
// returned (and nothing is published: the value is still there).
func (b *Broker) dropShared(ctx context.Context, key string) error {
	if err := b.shared.Delete(ctx, key); err != nil {
		b.redisError(ctx, "delete", err)
		return err
	}
	if err := b.shared.PublishInvalidation(ctx, key); err != nil {
		b.redisError(ctx, "publish", err)
	}
	return nil
}

// pendingLogouts are the users whose logout's Redis steps this replica is
// still retrying (retryLogout). Until the retry has run, nothing here puts
// a token of theirs back into Redis: the retry deletes and revokes what
// Redis then holds, so a token put back would be revoked under a page that
// was just given it, or a copy the logout should have removed would come
// back for the other replicas.
type pendingLogouts struct {
	mu   sync.Mutex
	keys map[string]int // token key -> retries running
	back chan struct{}  // closed by wake
}

func (p *pendingLogouts) add(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys == nil {
		p.keys = make(map[string]int)
	}
	p.keys[key]++
}

func (p *pendingLogouts) done(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys[key]--; p.keys[key] <= 0 {
		delete(p.keys, key)
	}
}

func (p *pendingLogouts) has(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keys[key] > 0
}

// redisBack is closed when the invalidation subscription next comes back:
// Redis answers again, so the retries need not wait out their back-off.
func (p *pendingLogouts) redisBack() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.back == nil {
		p.back = make(chan struct{})
	}
	return p.back
}

// wake closes the channel redisBack returned.
func (p *pendingLogouts) wake() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.back != nil {
		close(p.back)
		p.back = nil
	}
}
