package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
)

func TestInvalidation(t *testing.T) {
	srv := redistest.Start(t)
	newRedis := func(t *testing.T) *Redis { return newTestRedis(t, RedisOptions{URL: srv.URL()}) }
	runInvalidationTests(t, newRedis)

	t.Run("Reconnects", func(t *testing.T) {
		sub := subscribe(t, newRedis(t))
		pub := newRedis(t)
		publishUntilSeen(t, pub, "qtb:tok:t:{before}", sub)
		srv.Stop()
		srv.Restart(t)
		publishUntilSeen(t, pub, "qtb:tok:t:{after}", sub)
	})
	t.Run("SubscribedWhileRedisDown", func(t *testing.T) {
		srv.Stop()
		sub := subscribe(t, newRedis(t))
		srv.Restart(t)
		publishUntilSeen(t, newRedis(t), "qtb:tok:t:{late}", sub)
	})
}

// runInvalidationTests runs the pub/sub behaviour every topology must share.
func runInvalidationTests(t *testing.T, newRedis newRedisFunc) {
	t.Run("PublishReachesOtherClients", func(t *testing.T) {
		pub, sub1, sub2 := newRedis(t), subscribe(t, newRedis(t)), subscribe(t, newRedis(t))
		publishUntilSeen(t, pub, "qtb:tok:t:{abc}", sub1, sub2)
		// Subscribed now: one publish reaches both.
		for i := range 3 {
			key := fmt.Sprintf("qtb:tok:t:{abc%d}", i)
			if err := pub.PublishInvalidation(t.Context(), key); err != nil {
				t.Fatal(err)
			}
			sub1.waitFor(t, key)
			sub2.waitFor(t, key)
		}
	})
	t.Run("ReturnsWhenContextDone", func(t *testing.T) {
		r := newRedis(t)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- r.SubscribeInvalidations(ctx, func(string) {}) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("SubscribeInvalidations = %v, want nil after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("SubscribeInvalidations did not return after cancel")
		}
	})
}

// subscriber is a running SubscribeInvalidations collecting keys.
type subscriber struct {
	keys chan string
}

// subscribe runs SubscribeInvalidations on r until t ends, and checks that
// it returns nil then.
func subscribe(t *testing.T, r *Redis) *subscriber {
	t.Helper()
	s := &subscriber{keys: make(chan string, 1000)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- r.SubscribeInvalidations(ctx, func(key string) {
			select {
			case s.keys <- key:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("SubscribeInvalidations = %v, want nil", err)
		}
	})
	return s
}

// publishUntilSeen publishes key until every subscriber has it: a message
// published before a subscription is up is lost, by design.
func publishUntilSeen(t *testing.T, pub *Redis, key string, subs ...*subscriber) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(subs) > 0 {
		err := pub.PublishInvalidation(t.Context(), key)
		if err == nil && subs[0].seen(key, 20*time.Millisecond) {
			subs = subs[1:]
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("invalidation of %q not received within 15s (last publish: %v)", key, err)
		}
	}
}

// waitFor waits for key, published already.
func (s *subscriber) waitFor(t *testing.T, key string) {
	t.Helper()
	if !s.seen(key, 15*time.Second) {
		t.Fatalf("invalidation of %q not received within 15s", key)
	}
}

func (s *subscriber) seen(key string, within time.Duration) bool {
	timeout := time.After(within)
	for {
		select {
		case k := <-s.keys:
			if k == key {
				return true
			}
		case <-timeout:
			return false
		}
	}
}
