// Package cache owns the token store: opaque values with a time to live, kept
// in Redis when replicas share one, and in process memory (Memory, the L1
// in front of Redis, or the only tier without it). It knows bytes (or, in
// Memory, values of the caller's type), key names and TTLs only, nothing of
// Qlik or sessions.
//
// Around the store it offers what replicas sharing Redis need: a Keyring
// sealing values at rest (AES-256-GCM, bound to their key names), leases
// (Redis.TryLock) so one replica refreshes a token while others wait,
// invalidation broadcasts (Redis.PublishInvalidation) so replicas drop
// in-process copies, a rate limit all replicas share (Redis.Allow, one key
// per limit: the broker's is qtb:rate:<tenant>), and a circuit breaker so a dead Redis costs callers an
// immediate ErrUnavailable rather than a timeout each.
//
// # Redis topologies and hash tags
//
// Redis may be one node, a Sentinel-managed master or a Cluster
// (RedisOptions.Mode). In Cluster, a Lua script or multi-key command may
// only touch keys of one hash slot, so all keys of one user must share a
// hash tag, the part of the name in braces, which alone decides the slot:
//
//	qtb:tok:<tenant>:{<hash>}   the user's sealed token
//	qtb:lock:<tenant>:{<hash>}  the lease for refreshing it
//
// where <hash> is an HMAC of the user's identity under Keyring.NameKey, so
// Redis never sees user ids. Keys of different users spread over the
// cluster; a script over one user's lease and token (writing the token
// only while the lease is held) works. Pub/sub messages reach subscribers
// on every Cluster node.
package cache

import (
	"context"
	"errors"
	"time"
)

// ErrMiss is returned by Get when the key is absent or expired.
var ErrMiss = errors.New("cache: miss")

// ErrInvalidTTL is returned by Set when the TTL is not positive: a value that
// never expires, or expires at once, is a caller bug, not something to store.
var ErrInvalidTTL = errors.New("cache: ttl must be positive")

// store is what a byte store offers; the conformance suite runs against
// Redis and against Memory[[]byte] through a copying adapter. Consumers
// declare their own, smaller interfaces.
type store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	Delete(ctx context.Context, key string) error
	Close() error
}

var _ store = (*Redis)(nil)
