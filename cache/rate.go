package cache

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// ErrInvalidRate is returned by Allow for a rate that is not positive and
// finite (at least one call in about two years) or a burst below one.
var ErrInvalidRate = errors.New("cache: rate must be positive and burst at least 1")

// minPerMinute keeps the interval between calls within a time.Duration.
const minPerMinute = 1e-6

// Allow takes one call from the rate limit named key, shared by every
// client of this Redis: on average perMinute calls a minute, up to burst at
// once after a quiet spell. In any stretch of time T it lets through at
// most burst + perMinute*T/1m calls, whichever replica asks. It reports
// whether the call may go now; when not, nothing is taken and retryAfter is
// how long until one could (another client may take it first).
//
// The limit is GCRA (github.com/go-redis/redis_rate) in one Lua script on
// Redis's clock, so replicas' clocks do not matter; its state is one key,
// named key exactly, that expires once the limit is back to full burst.
// Errors, the breaker's ErrUnavailable included, are wrapped as
// "cache: redis rate: ..."; the caller decides whether to fail open.
func (r *Redis) Allow(ctx context.Context, key string, perMinute float64, burst int) (allowed bool, retryAfter time.Duration, err error) {
	if !(perMinute >= minPerMinute) || burst < 1 || perMinute > float64(time.Minute) {
		return false, 0, ErrInvalidRate
	}
	// One call per interval, which keeps a fractional rate exact.
	limit := redis_rate.Limit{Rate: 1, Period: time.Duration(float64(time.Minute) / perMinute), Burst: burst}
	var res *redis_rate.Result
	err = r.do(ctx, "rate", func(ctx context.Context) (err error) {
		res, err = redis_rate.NewLimiter(unprefixed{r.client}).Allow(ctx, key, limit)
		return err
	})
	if err != nil {
		return false, 0, err
	}
	if res.Allowed > 0 {
		return true, 0, nil
	}
	return false, max(res.RetryAfter, 0), nil
}

// ratePrefix is what redis_rate puts before every key it is given.
const ratePrefix = "rate:"

// unprefixed hands redis_rate the client with the library's own key prefix
// taken off again, so a limit's key is the caller's name, under qtb: like
// every other key (and any ACL key pattern granted to the broker).
type unprefixed struct{ redis.UniversalClient }

func (c unprefixed) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return c.UniversalClient.Eval(ctx, script, trimRatePrefix(keys), args...)
}

func (c unprefixed) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return c.UniversalClient.EvalSha(ctx, sha1, trimRatePrefix(keys), args...)
}

func (c unprefixed) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return c.UniversalClient.EvalRO(ctx, script, trimRatePrefix(keys), args...)
}

func (c unprefixed) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return c.UniversalClient.EvalShaRO(ctx, sha1, trimRatePrefix(keys), args...)
}

func (c unprefixed) Del(ctx context.Context, keys ...string) *redis.IntCmd {
	return c.UniversalClient.Del(ctx, trimRatePrefix(keys)...)
}

func trimRatePrefix(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = strings.TrimPrefix(k, ratePrefix)
	}
	return out
}
