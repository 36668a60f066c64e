package cache

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
)

// newRedisFunc returns a new client to one shared Redis deployment, closed
// when t ends. Two calls make two clients, as two replicas would have.
type newRedisFunc func(t *testing.T) *Redis

func TestLease(t *testing.T) {
	srv := redistest.Start(t)
	runLeaseTests(t, func(t *testing.T) *Redis { return newTestRedis(t, RedisOptions{URL: srv.URL()}) })
}

// runLeaseTests runs the lease behaviour every topology must share, on
// hash-tagged keys as the broker names them.
func runLeaseTests(t *testing.T, newRedis newRedisFunc) {
	tests := []struct {
		name string
		run  func(t *testing.T, newRedis newRedisFunc, key string)
	}{
		{"MutualExclusion", testLeaseMutualExclusion},
		{"ReleaseOnlyByOwner", testLeaseReleaseOnlyByOwner},
		{"ExpiryLetsAnotherTakeOver", testLeaseExpiry},
		{"ExtendKeepsIt", testLeaseExtend},
		{"KeepAlive", testLeaseKeepAlive},
		{"KeepAliveStopsWhenLost", testLeaseKeepAliveStopsWhenLost},
		{"InvalidTTL", testLeaseInvalidTTL},
		{"CancelledContext", testLeaseCancelledContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, newRedis, "qtb:lock:t:{"+tt.name+"}")
		})
	}
}

func mustLock(t *testing.T, r *Redis, key string, ttl time.Duration) *Lease {
	t.Helper()
	l, ok, err := r.TryLock(t.Context(), key, ttl)
	if err != nil || !ok || l == nil {
		t.Fatalf("TryLock(%q) = %v, %v, %v; want a lease", key, l, ok, err)
	}
	if l.Key() != key {
		t.Fatalf("Key() = %q, want %q", l.Key(), key)
	}
	return l
}

func mustNotLock(t *testing.T, r *Redis, key string) {
	t.Helper()
	l, ok, err := r.TryLock(t.Context(), key, time.Minute)
	if err != nil || ok || l != nil {
		t.Fatalf("TryLock(%q) = %v, %v, %v; want held by another, nil error", key, l, ok, err)
	}
}

func mustExtend(t *testing.T, l *Lease, ttl time.Duration, want bool) {
	t.Helper()
	held, err := l.Extend(t.Context(), ttl)
	if err != nil || held != want {
		t.Fatalf("Extend = %v, %v; want %v, nil", held, err, want)
	}
}

func mustRelease(t *testing.T, l *Lease) {
	t.Helper()
	if err := l.Release(t.Context()); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// waitLock polls TryLock until r gets the lease, which happens once a
// short real TTL has passed.
func waitLock(t *testing.T, r *Redis, key string, ttl time.Duration) *Lease {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, ok, err := r.TryLock(t.Context(), key, ttl)
		if err != nil {
			t.Fatalf("TryLock: %v", err)
		}
		if ok {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("TryLock(%q) still held by another after 10s", key)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testLeaseMutualExclusion(t *testing.T, newRedis newRedisFunc, key string) {
	a, b := newRedis(t), newRedis(t)
	la := mustLock(t, a, key, time.Minute)
	mustNotLock(t, b, key)
	mustNotLock(t, a, key) // not reentrant either

	// Of many concurrent attempts, exactly one wins.
	const contenders = 8
	other := key + ":race"
	wins := make(chan *Lease, contenders)
	errs := make(chan error, contenders)
	for i := range contenders {
		r := a
		if i%2 == 1 {
			r = b
		}
		go func() {
			l, ok, err := r.TryLock(t.Context(), other, time.Minute)
			if ok {
				wins <- l
			}
			errs <- err
		}()
	}
	for range contenders {
		if err := <-errs; err != nil {
			t.Errorf("concurrent TryLock: %v", err)
		}
	}
	if n := len(wins); n != 1 {
		t.Fatalf("%d concurrent TryLocks won, want 1", n)
	}

	mustRelease(t, la)
	lb := mustLock(t, b, key, time.Minute)
	mustNotLock(t, a, key)
	mustRelease(t, lb)
}

func testLeaseReleaseOnlyByOwner(t *testing.T, newRedis newRedisFunc, key string) {
	a, b := newRedis(t), newRedis(t)
	stale := mustLock(t, a, key, time.Minute)
	mustRelease(t, stale)
	mustRelease(t, stale) // releasing twice is fine

	lb := mustLock(t, b, key, time.Minute)
	mustRelease(t, stale) // a's old lease must not free b's
	mustExtend(t, stale, time.Minute, false)
	mustNotLock(t, a, key)
	mustExtend(t, lb, time.Minute, true)
	mustRelease(t, lb)
	mustLock(t, a, key, time.Minute)
}

func testLeaseExpiry(t *testing.T, newRedis newRedisFunc, key string) {
	a, b := newRedis(t), newRedis(t)
	la := mustLock(t, a, key, 50*time.Millisecond)
	lb := waitLock(t, b, key, time.Minute)

	mustExtend(t, la, time.Minute, false) // lost, and cannot steal it back
	mustRelease(t, la)                    // not an error, and frees nothing
	mustNotLock(t, a, key)
	mustExtend(t, lb, time.Minute, true)
}

func testLeaseExtend(t *testing.T, newRedis newRedisFunc, key string) {
	r := newRedis(t)
	l := mustLock(t, r, key, 100*time.Millisecond)
	mustExtend(t, l, time.Hour, true)
	pttl, err := r.Client().PTTL(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if pttl <= time.Hour-time.Minute || pttl > time.Hour {
		t.Fatalf("PTTL after Extend(1h) = %v", pttl)
	}
	mustExtend(t, l, 30*time.Second, true) // extending may shorten too
	if pttl, _ := r.Client().PTTL(t.Context(), key).Result(); pttl > 30*time.Second {
		t.Fatalf("PTTL after Extend(30s) = %v", pttl)
	}
}

// testLeaseKeepAlive holds a 600 ms lease through several of its TTLs by
// watching its PTTL jump back up, then checks that after stop it expires.
func testLeaseKeepAlive(t *testing.T, newRedis newRedisFunc, key string) {
	a, b := newRedis(t), newRedis(t)
	const ttl = 600 * time.Millisecond // room for a loaded CI machine
	l := mustLock(t, a, key, ttl)
	stop := l.KeepAlive(t.Context(), ttl)
	extensions, last := 0, ttl
	deadline := time.Now().Add(10 * time.Second)
	for extensions < 4 {
		pttl, err := a.Client().PTTL(t.Context(), key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pttl < 0 {
			t.Fatalf("lease expired under KeepAlive after %d extensions (PTTL %v)", extensions, pttl)
		}
		if pttl > last {
			extensions++
		}
		last = pttl
		if time.Now().After(deadline) {
			t.Fatalf("%d extensions seen in 10s, want 4", extensions)
		}
		time.Sleep(2 * time.Millisecond)
	}
	mustNotLock(t, b, key)
	stop()
	waitKeepAlives(t, 0)
	stop()                           // idempotent
	waitLock(t, b, key, time.Minute) // no extension after stop
}

func testLeaseKeepAliveStopsWhenLost(t *testing.T, newRedis newRedisFunc, key string) {
	r := newRedis(t)
	const ttl = 600 * time.Millisecond // room for a loaded CI machine
	l := mustLock(t, r, key, ttl)
	stop := l.KeepAlive(t.Context(), ttl)
	defer stop()
	waitKeepAlives(t, 1) // the check below can see it
	if err := r.Client().Del(t.Context(), key).Err(); err != nil {
		t.Fatal(err)
	}
	waitKeepAlives(t, 0) // the goroutine ends without stop

	ctx, cancel := context.WithCancel(t.Context())
	l = mustLock(t, r, key, ttl)
	stop = l.KeepAlive(ctx, ttl)
	defer stop()
	cancel()
	waitKeepAlives(t, 0) // and when ctx is done
}

// keepAlives counts the KeepAlive goroutines running. goleak checks the
// whole package at exit, but go-redis starts goroutines of its own while a
// test runs (Sentinel and Cluster watchers), so a check within a test
// looks for ours only.
func keepAlives() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "cache.(*Lease).keepAlive(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// waitKeepAlives polls until want KeepAlive goroutines run.
func waitKeepAlives(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := keepAlives()
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d KeepAlive goroutines running after 10s, want %d", n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testLeaseInvalidTTL(t *testing.T, newRedis newRedisFunc, key string) {
	r := newRedis(t)
	if _, _, err := r.TryLock(t.Context(), key, 0); !errors.Is(err, ErrInvalidTTL) {
		t.Errorf("TryLock(ttl 0) = %v, want ErrInvalidTTL", err)
	}
	l := mustLock(t, r, key, time.Minute)
	if _, err := l.Extend(t.Context(), -time.Second); !errors.Is(err, ErrInvalidTTL) {
		t.Errorf("Extend(ttl -1s) = %v, want ErrInvalidTTL", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("KeepAlive(ttl 0) did not panic")
		}
	}()
	l.KeepAlive(t.Context(), 0)
}

func testLeaseCancelledContext(t *testing.T, newRedis newRedisFunc, key string) {
	r := newRedis(t)
	l := mustLock(t, r, key, time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, lockErr := r.TryLock(ctx, key+":other", time.Minute)
	_, extendErr := l.Extend(ctx, time.Minute)
	for op, err := range map[string]error{
		"lock":    lockErr,
		"extend":  extendErr,
		"release": l.Release(ctx),
	} {
		if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "cache: redis "+op+": ") {
			t.Errorf("%s with a cancelled context = %v", op, err)
		}
	}
	mustNotLock(t, r, key)
}
