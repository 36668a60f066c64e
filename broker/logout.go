package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// Evict removes the identity's cached tokens from every tier (and every
// replica's L1) and revokes them at the tenant. With nothing cached it
// succeeds without calling the tenant.
func (b *Broker) Evict(ctx context.Context, id session.Identity) error {
	up, user, err := b.resolve(ctx, id)
	if err != nil {
		return err
	}
	k := b.keysFor(up, user)
	b.flight.Forget(k.token)

	var found []string
	if c, ok := b.getL1(k.token); ok {
		found = append(found, c.tok.AccessToken)
	}
	b.deleteL1(k.token)
	if b.shared != nil {
		if c, ok := b.fromShared(ctx, k.token, false); ok && (len(found) == 0 || found[0] != c.tok.AccessToken) {
			found = append(found, c.tok.AccessToken)
		}
		if err := b.dropShared(ctx, k.token); err != nil {
			return fmt.Errorf("broker: evict: %w", err)
		}
	}
	var errs []error
	for _, access := range found {
		if err := up.revoke(ctx, access); err != nil {
			errs = append(errs, fmt.Errorf("%w: revoke: %w", ErrUpstream, err))
		}
	}
	return errors.Join(errs...)
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
