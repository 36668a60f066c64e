package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/redis/go-redis/v9"
)

// The scripts compare the lease's value before acting, so that a replica
// whose lease expired and was taken over cannot extend or release the new
// holder's. Script.Run sends EVALSHA and falls back to EVAL once per
// server that has not seen the script.
var (
	extendScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0`)
	releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0`)
)

// Lease is a lock in Redis held until it is released or its TTL passes,
// for one replica at a time to do work others then reuse (refreshing a
// user's token). It is a lease, not a mutex: a holder that stalls past the
// TTL loses it without knowing, so work done under it must be safe to
// repeat. Use KeepAlive to hold it through work of unknown length.
//
// A Lease is safe for concurrent use.
type Lease struct {
	r     *Redis
	key   string
	value string // random, identifies this holder
}

// TryLock takes the lease on key for ttl (SET key value NX PX ttl) with a
// random 16-byte value. It returns ok false and a nil error when another
// holder has it. A ttl <= 0 returns ErrInvalidTTL.
//
// In Cluster, give the lease key the same hash tag as the keys it guards
// (see the package comment) if scripts are to touch both.
func (r *Redis) TryLock(ctx context.Context, key string, ttl time.Duration) (*Lease, bool, error) {
	if ttl <= 0 {
		return nil, false, ErrInvalidTTL
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails
	l := &Lease{r: r, key: key, value: hex.EncodeToString(b[:])}
	var ok bool
	err := r.do(ctx, "lock", func(ctx context.Context) (err error) {
		ok, err = r.client.SetNX(ctx, key, l.value, redisTTL(ttl)).Result()
		return err
	})
	if err != nil || !ok {
		return nil, false, err
	}
	return l, true, nil
}

// Key returns the key the lease is held on.
func (l *Lease) Key() string { return l.key }

// Extend resets the lease's TTL to ttl if it is still held, and reports
// whether it was. A ttl <= 0 returns ErrInvalidTTL.
func (l *Lease) Extend(ctx context.Context, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, ErrInvalidTTL
	}
	var n int64
	err := l.r.do(ctx, "extend", func(ctx context.Context) (err error) {
		n, err = extendScript.Run(ctx, l.r.client, []string{l.key}, l.value, redisTTL(ttl).Milliseconds()).Int64()
		return err
	})
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// Release gives the lease up if it is still held. Releasing a lease that
// expired or was released already is not an error.
func (l *Lease) Release(ctx context.Context) error {
	return l.r.do(ctx, "release", func(ctx context.Context) error {
		return releaseScript.Run(ctx, l.r.client, []string{l.key}, l.value).Err()
	})
}

// KeepAlive extends the lease to ttl every ttl/3 in a goroutine, until ctx
// is done, stop is called or the lease is found lost. Failed extensions
// are retried at the next tick, while the lease may still be held. stop
// ends the goroutine and waits for it; it may be called more than once.
// Release the lease after stop, not before. KeepAlive panics if ttl <= 0,
// as time.NewTicker does.
func (l *Lease) KeepAlive(ctx context.Context, ttl time.Duration) (stop func()) {
	if ttl <= 0 {
		panic("cache: Lease.KeepAlive: ttl must be positive")
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go l.keepAlive(ctx, ttl, done)
	return func() {
		cancel()
		<-done
	}
}

func (l *Lease) keepAlive(ctx context.Context, ttl time.Duration, done chan<- struct{}) {
	defer close(done)
	interval := max(ttl/3, time.Millisecond) // PX has millisecond resolution
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// An attempt made at ttl/3 that has not returned by the lease's
		// expiry is pointless.
		actx, cancel := context.WithTimeout(ctx, 2*interval)
		held, err := l.Extend(actx, ttl)
		cancel()
		if err == nil && !held {
			return
		}
	}
}
