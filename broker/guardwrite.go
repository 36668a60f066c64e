package broker

import (
	"context"
)

// write makes one Tier 2 admin call other than a token call (a groups
// sync's group create or membership patch) on the tenant's road. Qlik
// counts it in the same tier as /oauth/token, so it obeys the same
// cooldown after a 429 and starts one when it gets a 429 itself, and it
// takes a concurrency slot and a rate token (this process's and the
// replicas' shared limit) as a token call does. It is not retried: a
// write that failed is re-read and re-diffed by the next sync instead,
// and it does not count towards the token endpoint's circuit breaker.
func (g *guard) write(ctx context.Context, endpoint string, call func(context.Context) error) error {
	if err := g.checkCooldown(ctx); err != nil {
		return err
	}
	release, err := g.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	start := g.now()
	err = call(ctx)
	observeUpstream(g.m, g.tenant, endpoint, g.now().Sub(start), err)
	if qe := qlikStatus(err, 429); qe != nil {
		return g.startCooldown(ctx, qe)
	}
	return err
}
