package broker

import (
	"context"
	"errors"
	"time"
)

// Interactive first: a background refresh-ahead replaces a token that is
// still served, so it never waits for the tenant's budget the way a
// request does. It goes only when no interactive call is waiting for a
// slot or a rate token in this process, takes a slot only when no request
// waits for one (queueing behind other refreshes), needs a token of this
// process's rate limit at once, and the replicas' shared limit has
// at least half its burst to spare. Otherwise it defers (errRefreshDeferred)
// and is tried again later, while the served token still has more than
// MinTokenTTL to live; past that no request is served from it and the
// next one fills, interactively.

type backgroundCtxKey struct{}

// asBackground marks ctx as a background refresh's.
func asBackground(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundCtxKey{}, true)
}

func isBackground(ctx context.Context) bool {
	bg, _ := ctx.Value(backgroundCtxKey{}).(bool)
	return bg
}

// backgroundSlot takes a concurrency slot for a background call only when
// no request waits for one: requests block on the slots (and get the next
// free one), a background call only tries, backing off, and defers as soon
// as a request is waiting or ctx ends.
func (g *guard) backgroundSlot(ctx context.Context) error {
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		if g.waiting.Load() > 0 {
			return errRefreshDeferred
		}
		select {
		case g.slots <- struct{}{}:
			return nil
		default:
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return errRefreshDeferred
		case <-t.C:
		}
	}
}

// errRefreshDeferred: a background refresh gave way to requests.
var errRefreshDeferred = errors.New("broker: background refresh deferred: requests come first")

// backgroundBurst is the burst a background call asks the shared limit
// for: a call passes only with burst-backgroundBurst+1 calls to spare.
func backgroundBurst(burst int) int { return max(1, burst/2) }
