package cache

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
)

func TestRateLimit(t *testing.T) {
	srv := redistest.Start(t)
	runRateTests(t, func(t *testing.T) *Redis { return newTestRedis(t, RedisOptions{URL: srv.URL()}) })

	t.Run("KeyIsTheCallersName", func(t *testing.T) {
		r := newTestRedis(t, RedisOptions{URL: srv.URL()})
		mustAllow(t, r, "qtb:rate:named", 60, 3, true)
		rdb := srv.Client(t)
		ttl, err := rdb.PTTL(t.Context(), "qtb:rate:named").Result()
		if err != nil || ttl <= 0 || ttl > 2*time.Second {
			t.Fatalf("PTTL qtb:rate:named = %v, %v; want the key, expiring once the burst is back (1s)", ttl, err)
		}
		if n, _ := rdb.Exists(t.Context(), "rate:qtb:rate:named").Result(); n != 0 {
			t.Fatal("the limiter also wrote rate:qtb:rate:named, outside qtb:")
		}
	})

	t.Run("RedisDown", func(t *testing.T) {
		down := redistest.Start(t)
		r := newTestRedis(t, RedisOptions{URL: down.URL(), BreakerFailures: 2, BreakerOpen: time.Minute})
		down.Stop()
		for range 2 {
			_, _, err := r.Allow(t.Context(), "qtb:rate:down", 60, 1)
			if err == nil || errors.Is(err, ErrUnavailable) || !strings.HasPrefix(err.Error(), "cache: redis rate: ") {
				t.Fatalf("Allow with Redis stopped = %v, want Redis' own error as cache: redis rate: ...", err)
			}
		}
		if _, _, err := r.Allow(t.Context(), "qtb:rate:down", 60, 1); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Allow with the breaker open = %v, want ErrUnavailable", err)
		}
	})
}

// runRateTests runs the shared rate limit's behaviour every topology must
// share. Each test uses its own key, so none needs an empty Redis.
func runRateTests(t *testing.T, newRedis newRedisFunc) {
	t.Run("BurstThenRefused", func(t *testing.T) {
		r := newRedis(t)
		key := "qtb:rate:" + t.Name()
		for i := range 5 {
			if ok, _, err := r.Allow(t.Context(), key, 60, 5); err != nil || !ok {
				t.Fatalf("call %d of a burst of 5 = %v, %v; want allowed", i+1, ok, err)
			}
		}
		ok, retry, err := r.Allow(t.Context(), key, 60, 5)
		if err != nil || ok {
			t.Fatalf("call 6 = %v, %v; want refused", ok, err)
		}
		if retry <= 0 || retry > time.Second {
			t.Fatalf("retryAfter = %v, want (0, 1s] at 60 a minute", retry)
		}
	})

	t.Run("SharedByClients", func(t *testing.T) {
		a, b := newRedis(t), newRedis(t)
		key := "qtb:rate:" + t.Name()
		mustAllow(t, a, key, 1, 3, true)
		mustAllow(t, b, key, 1, 3, true)
		mustAllow(t, a, key, 1, 3, true)
		mustAllow(t, b, key, 1, 3, false)
		mustAllow(t, a, key, 1, 3, false)
		// Other keys (tenants) are not affected.
		mustAllow(t, b, key+"-other", 1, 3, true)
	})

	t.Run("FractionalRate", func(t *testing.T) {
		r := newRedis(t)
		key := "qtb:rate:" + t.Name()
		mustAllow(t, r, key, 0.5, 1, true)
		_, retry, err := r.Allow(t.Context(), key, 0.5, 1)
		if err != nil || retry < 110*time.Second || retry > 120*time.Second {
			t.Fatalf("retryAfter at half a call a minute = %v, %v; want about 120s", retry, err)
		}
	})

	t.Run("RefillsAfterRetryAfter", func(t *testing.T) {
		r := newRedis(t)
		key := "qtb:rate:" + t.Name()
		const perMinute = 6000 // one every 10ms
		mustAllow(t, r, key, perMinute, 1, true)
		ok, retry, err := r.Allow(t.Context(), key, perMinute, 1)
		if err != nil || ok || retry <= 0 || retry > 10*time.Millisecond {
			t.Fatalf("second call = %v, %v, %v; want refused for at most 10ms", ok, retry, err)
		}
		time.Sleep(retry) // the behaviour under test: a refused caller that waits gets through
		mustAllow(t, r, key, perMinute, 1, true)
	})

	t.Run("InvalidLimit", func(t *testing.T) {
		r := newRedis(t)
		for _, l := range []struct {
			perMinute float64
			burst     int
		}{{0, 1}, {-1, 1}, {math.NaN(), 1}, {math.Inf(1), 1}, {60, 0}} {
			if _, _, err := r.Allow(t.Context(), "qtb:rate:"+t.Name(), l.perMinute, l.burst); !errors.Is(err, ErrInvalidRate) {
				t.Errorf("Allow(%v a minute, burst %d) = %v, want ErrInvalidRate", l.perMinute, l.burst, err)
			}
		}
	})
}

func mustAllow(t *testing.T, r *Redis, key string, perMinute float64, burst int, want bool) {
	t.Helper()
	ok, retry, err := r.Allow(t.Context(), key, perMinute, burst)
	if err != nil || ok != want {
		t.Fatalf("Allow(%s) = %v, %v; want %v", key, ok, err, want)
	}
	if ok != (retry == 0) {
		t.Fatalf("Allow(%s) = %v with retryAfter %v", key, ok, retry)
	}
}
