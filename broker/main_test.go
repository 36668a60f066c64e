package broker_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// TestMain silences go-redis' own logger (the outage tests make it print a
// line per failed dial) and fails the run if any test leaves a goroutine
// behind: refreshes, lease keep-alives, invalidation listeners and
// proxied streams must all end.
func TestMain(m *testing.M) {
	redis.SetLogger(quietRedis{})
	goleak.VerifyTestMain(m)
}
