package broker

import (
	"context"
	"errors"
	"hash/fnv"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// refreshAt is when tok's background refresh is due. Each token gets a
// point spread uniformly over the first half of its window (from a hash of
// its key and expiry, so every replica computes the same point): keys
// cached together do not refresh together, and a failed refresh has the
// second half of the window to succeed before anyone has to wait.
func (b *Broker) refreshAt(key string, tok qlik.Token) time.Time {
	h := fnv.New64a()
	h.Write([]byte(key))
	var exp [8]byte
	u := uint64(tok.ExpiresAt.UnixNano())
	for i := range exp {
		exp[i] = byte(u >> (8 * i))
	}
	h.Write(exp[:])
	frac := float64(h.Sum64()>>11) / (1 << 53)
	spread := (b.refreshAhead - b.minTTL) / 2
	start := tok.ExpiresAt.Add(-b.skew - b.refreshAhead)
	return start.Add(time.Duration(frac * float64(spread)))
}

// maybeRefresh starts the background refresh of a served token once it is
// due, at most one per key at a time in this process.
func (b *Broker) maybeRefresh(up *upstream, k keys, user qlik.UserLookup, c *cached, now time.Time) {
	if now.UnixNano() < c.refreshAt {
		return
	}
	b.refreshMu.Lock()
	notBefore, busy := b.refreshing[k.token]
	if busy && (notBefore.IsZero() || now.Before(notBefore)) {
		b.refreshMu.Unlock()
		return
	}
	b.refreshing[k.token] = time.Time{}
	b.bg.Add(1)
	b.refreshMu.Unlock()

	go func() {
		defer b.bg.Done()
		ctx, cancel := context.WithTimeout(asBackground(b.bgCtx), b.fetchTimeout)
		defer cancel()
		ctx, span := b.tracer.Start(ctx, spanRefresh, trace.WithAttributes(attrTenant.String(up.tenant.ID)))
		result, err := b.refresh(ctx, up, k, user, c.tok)
		endSpan(span, result, err)
		b.m.Refreshes.WithLabelValues(result).Inc()

		b.refreshMu.Lock()
		defer b.refreshMu.Unlock()
		switch result {
		case metrics.RefreshRefreshed, metrics.RefreshAdopted:
			delete(b.refreshing, k.token)
		case metrics.RefreshSkipped:
			// Another replica is on it; look again shortly to adopt.
			b.refreshing[k.token] = b.now().Add(time.Second)
		case metrics.RefreshError:
			if errors.Is(err, errRefreshDeferred) {
				// Requests came first; the served token has life left
				// (past MinTokenTTL a request fills, interactively).
				// Counted as a failed refresh and as a deferral, tried
				// again shortly by the next request served the token.
				b.m.RefreshDeferrals.Inc()
				b.refreshing[k.token] = b.now().Add(5 * time.Second)
				return
			}
			fallthrough
		default:
			b.log.Warn("background token refresh failed; the cached token is still served", "tenant", up.tenant.ID, "err", err)
			wait := 30 * time.Second
			var ue *UnavailableError
			if errors.As(err, &ue) {
				wait = max(wait, ue.RetryAfter)
			}
			b.refreshing[k.token] = b.now().Add(wait)
		}
	}()
}

// refresh replaces old with a fresh token in both tiers, unless another
// replica has done so already (adopt it) or is doing so (leave it to them).
func (b *Broker) refresh(ctx context.Context, up *upstream, k keys, user qlik.UserLookup, old qlik.Token) (string, error) {
	if b.shared != nil {
		adopt := func() bool {
			cur, ok := b.fromShared(ctx, k.token, false)
			if ok && cur.tok.ExpiresAt.After(old.ExpiresAt) {
				b.putL1(k.token, cur)
				return true
			}
			return false
		}
		if adopt() {
			return metrics.RefreshAdopted, nil
		}
		lease, ok, err := b.shared.TryLock(ctx, k.lease(), b.leaseTTL)
		switch {
		case err != nil:
			b.redisError(ctx, "lock", err) // Redis down: refresh locally
		case !ok:
			return metrics.RefreshSkipped, nil
		default:
			defer b.holdLease(ctx, lease)()
			// The previous holder may have finished just before we locked.
			if adopt() {
				return metrics.RefreshAdopted, nil
			}
		}
	}
	if _, err := b.mint(ctx, up, k, user); err != nil {
		return metrics.RefreshError, err
	}
	return metrics.RefreshRefreshed, nil
}
