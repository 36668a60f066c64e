package cache

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
)

// transitions records OnStateChange calls.
type transitions struct {
	mu  sync.Mutex
	got []bool
}

func (tr *transitions) record(degraded bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.got = append(tr.got, degraded)
}

func (tr *transitions) get() []bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]bool(nil), tr.got...)
}

func TestRedisBreaker(t *testing.T) {
	const failures = 3
	srv := redistest.Start(t)
	var tr transitions
	r := newTestRedis(t, RedisOptions{
		URL:             srv.URL(),
		BreakerFailures: failures,
		BreakerOpen:     100 * time.Millisecond,
		OnStateChange:   tr.record,
	})
	other := newTestRedis(t, RedisOptions{URL: srv.URL()})
	ctx := t.Context()
	mustSet(t, r, "k", []byte("v"), time.Minute)
	lease := mustLock(t, r, "qtb:lock:t:{abc}", time.Minute)

	srv.Stop()
	for i := range failures {
		if err := r.Set(ctx, "k", []byte("v"), time.Minute); err == nil || errors.Is(err, ErrUnavailable) {
			t.Fatalf("failure %d: Set = %v, want Redis' own error", i+1, err)
		}
		if i < failures-1 && r.Degraded() {
			t.Fatalf("Degraded after %d failures, want after %d", i+1, failures)
		}
	}
	if !r.Degraded() {
		t.Fatalf("not Degraded after %d failures", failures)
	}
	if got := tr.get(); len(got) != 1 || !got[0] {
		t.Fatalf("OnStateChange calls = %v, want [true]", got)
	}

	// Open: every guarded call fails at once, without asking Redis.
	_, getErr := r.Get(ctx, "k")
	_, _, lockErr := r.TryLock(ctx, "qtb:lock:t:{xyz}", time.Minute)
	_, extendErr := lease.Extend(ctx, time.Minute)
	for op, err := range map[string]error{
		"get":     getErr,
		"set":     r.Set(ctx, "k", []byte("v"), time.Minute),
		"delete":  r.Delete(ctx, "k"),
		"lock":    lockErr,
		"extend":  extendErr,
		"release": lease.Release(ctx),
		"publish": r.PublishInvalidation(ctx, "k"),
	} {
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, gobreaker.ErrOpenState) {
			t.Errorf("%s while open = %v, want ErrUnavailable", op, err)
		} else if !strings.HasPrefix(err.Error(), "cache: redis "+op+": ") {
			t.Errorf("%s error %q lacks the operation prefix", op, err)
		}
	}
	// Ping and other clients are not affected by r's breaker.
	if err := r.Ping(ctx); err == nil || errors.Is(err, ErrUnavailable) {
		t.Errorf("Ping while open = %v, want Redis' own error", err)
	}
	if err := other.Set(ctx, "k", []byte("v"), time.Minute); err == nil || errors.Is(err, ErrUnavailable) {
		t.Errorf("another client's Set = %v, want Redis' own error", err)
	}

	srv.Restart(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := r.Get(ctx, "k")
		if errors.Is(err, ErrMiss) { // the restarted server is empty
			break
		}
		if err != nil && !errors.Is(err, ErrUnavailable) {
			t.Logf("probe failed: %v", err) // possible while the server starts
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get after restart still failing after 10s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r.Degraded() {
		t.Error("still Degraded after a successful probe")
	}
	if got := tr.get(); len(got) != 2 || !got[0] || got[1] {
		t.Fatalf("OnStateChange calls = %v, want [true false]", got)
	}
	mustSet(t, r, "k", []byte("v2"), time.Minute)
	mustGet(t, r, "k", []byte("v2"))
}

// TestRedisBreakerCounts checks what counts as a failure, with a breaker
// that opens on the first one.
func TestRedisBreakerCounts(t *testing.T) {
	t.Run("misses and lost locks are not failures", func(t *testing.T) {
		srv := redistest.Start(t)
		r := newTestRedis(t, RedisOptions{URL: srv.URL(), BreakerFailures: 1})
		l := mustLock(t, r, "qtb:lock:t:{abc}", time.Minute)
		for range 3 {
			mustMiss(t, r, "absent")
			mustNotLock(t, r, l.Key())
		}
		mustRelease(t, l)
		mustExtend(t, l, time.Minute, false)
		mustRelease(t, l)
		if r.Degraded() {
			t.Fatal("Degraded after misses and lost leases")
		}
	})

	t.Run("caller cancellation is not a failure, a timeout is", func(t *testing.T) {
		r := newTestRedis(t, RedisOptions{
			URL:             "redis://" + silentServer(t) + "/0",
			ReadTimeout:     200 * time.Millisecond,
			MaxRetries:      -1,
			BreakerFailures: 1,
		})
		// Done before the call: never reaches the breaker.
		done, cancel := context.WithCancel(t.Context())
		cancel()
		expired, cancel := context.WithTimeout(t.Context(), -time.Second)
		defer cancel()
		for _, ctx := range []context.Context{done, expired} {
			if _, err := r.Get(ctx, "k"); !errors.Is(err, ctx.Err()) {
				t.Fatalf("Get = %v, want %v", err, ctx.Err())
			}
		}
		// Cancelled while waiting for the silent server. go-redis only
		// notices at ReadTimeout and reports a timeout; the caller left.
		for range 3 {
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(10*time.Millisecond, cancel)
			if _, err := r.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
				t.Fatalf("Get cancelled mid-call = %v, want context.Canceled", err)
			}
		}
		if r.Degraded() {
			t.Fatal("Degraded after the caller's cancellations")
		}
		// The caller's deadline passing mid-call: Redis was too slow.
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		if _, err := r.Get(ctx, "k"); err == nil || errors.Is(err, context.Canceled) {
			t.Fatalf("Get past its deadline = %v, want a timeout", err)
		}
		if !r.Degraded() {
			t.Fatal("not Degraded after a timeout")
		}
	})
}

// TestRedisOnStateChangeMayCallRedis checks that the callback does not run
// under the breaker's lock: calling back into Redis would deadlock.
func TestRedisOnStateChangeMayCallRedis(t *testing.T) {
	var r *Redis
	var tr transitions
	r = newTestRedis(t, RedisOptions{
		URL:             "redis://" + closedPort(t) + "/0",
		BreakerFailures: 1,
		OnStateChange: func(degraded bool) {
			_, err := r.Get(context.Background(), "k")
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("Get from OnStateChange = %v, want ErrUnavailable", err)
			}
			if !r.Degraded() {
				t.Error("Degraded() false inside OnStateChange(true)")
			}
			tr.record(degraded)
		},
	})
	if _, err := r.Get(t.Context(), "k"); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get = %v, want Redis' own error", err)
	}
	if got := tr.get(); len(got) != 1 || !got[0] {
		t.Fatalf("OnStateChange calls = %v, want [true]", got)
	}
}

func TestStateNotifierOrder(t *testing.T) {
	var tr transitions
	n := stateNotifier{fn: tr.record}
	var wg sync.WaitGroup
	for i := range 100 {
		n.push(i%2 == 0)
		wg.Go(n.flush)
	}
	wg.Wait()
	n.flush()
	got := tr.get()
	if len(got) != 100 {
		t.Fatalf("%d transitions delivered, want 100", len(got))
	}
	for i, d := range got {
		if d != (i%2 == 0) {
			t.Fatalf("transition %d = %v: out of order", i, d)
		}
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// silentServer accepts connections and never answers, until t ends.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = l.Close()
		<-done
	})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return l.Addr().String()
}
