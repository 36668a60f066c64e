package broker

import (
	"context"
	"errors"
)

// Interactive first: a background refresh-ahead replaces a token that is
// still served, so it never waits for the tenant's budget the way a
// request does. It goes only when the road is idle: no interactive call is
// waiting for a slot or a rate token in this process, a slot is free, this
// process's rate limit has a token now, and the replicas' shared limit has
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

// errRefreshDeferred: a background refresh gave way to requests.
var errRefreshDeferred = errors.New("broker: background refresh deferred: requests come first")

// backgroundBurst is the burst a background call asks the shared limit
// for: a call passes only with burst-backgroundBurst+1 calls to spare.
func backgroundBurst(burst int) int { return max(1, burst/2) }
