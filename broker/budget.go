package broker

import (
	"context"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// A budget is what one request may still spend on token calls: the
// per-identity buckets (QTB_USER_RATE) of the identities it acts for. The
// API puts it on the request's context; the broker spends from it just
// before a call to the tenant could start (a miss, the reissue after a
// 401), so cached answers cost nothing and every road to /oauth/token is
// inside the budget: the proxy's fill and its retry, service credentials
// (the service and the user it acts for), a refetch after a logout.
type budget struct {
	users *userLimiter
	keys  []string
}

type budgetCtxKey struct{}

// withBudget returns ctx carrying the budget of the identities named by
// keys; without a limiter it is ctx.
func withBudget(ctx context.Context, users *userLimiter, keys ...string) context.Context {
	if users == nil {
		return ctx
	}
	return context.WithValue(ctx, budgetCtxKey{}, &budget{users: users, keys: keys})
}

// identityKey names an identity's bucket.
func identityKey(id session.Identity) string {
	return id.Tenant + "\x00" + id.UserField + "\x00" + id.UserValue
}

// serviceKey names a service credential's own bucket.
func serviceKey(svc session.Identity) string { return "svc\x00" + svc.UserValue }

// spendBudget takes one token call from every bucket of ctx's budget, or
// refuses with a 429 (counted as user_rate_limited). A context without a
// budget may always call.
func (b *Broker) spendBudget(ctx context.Context) error {
	bu, _ := ctx.Value(budgetCtxKey{}).(*budget)
	return b.spend(bu)
}

// spend takes one call from every bucket of bu (nil: no limit), or refuses
// with a 429 (counted as user_rate_limited).
func (b *Broker) spend(bu *budget) error {
	if bu == nil {
		return nil
	}
	for _, k := range bu.keys {
		if wait, ok := bu.users.allow(k); !ok {
			reject(b.m, CauseUserRateLimit)
			return &userRateLimitedError{retryAfter: wait}
		}
	}
	return nil
}
