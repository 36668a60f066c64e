package cache

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// InvalidationChannel is the pub/sub channel PublishInvalidation and
// SubscribeInvalidations use.
const InvalidationChannel = "qtb:invalidate"

// InvalidateAll is the key SubscribeInvalidations hands its fn after the
// subscription was re-established: every invalidation published while it
// was down is lost, so the subscriber should drop everything it holds. It
// is never published.
const InvalidateAll = "*"

// PublishInvalidation tells every subscribed replica that key was deleted
// or replaced, so they drop it from their in-process caches. In Cluster,
// PUBLISH is broadcast to all nodes, so subscribers on any node hear it.
func (r *Redis) PublishInvalidation(ctx context.Context, key string) error {
	return r.do(ctx, "publish", func(ctx context.Context) error {
		return r.client.Publish(ctx, InvalidationChannel, key).Err()
	})
}

// SubscribeInvalidations calls fn with the key of every invalidation
// published, one call at a time, until ctx is done; it then returns nil.
// It returns an error only if the subscription ends otherwise (the client
// was closed).
//
// Delivery is at most once: Redis pub/sub does not queue messages for a
// subscriber that is disconnected, so invalidations published while
// Redis, the network or this replica's subscription is down are lost. The
// subscription is re-established automatically (go-redis health-checks and
// reconnects it), but callers must bound staleness by their in-process
// TTL, never rely on invalidations alone; after a re-subscription fn gets
// InvalidateAll. It does not go through the circuit breaker.
func (r *Redis) SubscribeInvalidations(ctx context.Context, fn func(key string)) error {
	// Subscribe does not fail when Redis is down: the channel below keeps
	// trying to connect and subscribe.
	ps := r.client.Subscribe(ctx, InvalidationChannel)
	defer ps.Close()
	msgs := ps.ChannelWithSubscriptions()
	subscribed := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-msgs:
			if !ok {
				return errors.New("cache: redis subscribe: subscription closed")
			}
			switch m := m.(type) {
			case *redis.Message:
				fn(m.Payload)
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					if subscribed {
						fn(InvalidateAll)
					}
					subscribed = true
				}
			}
		}
	}
}
