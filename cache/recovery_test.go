package cache

import (
	"errors"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
)

// openBreaker fails calls on r until its breaker opens.
func openBreaker(t *testing.T, r *Redis) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !r.Degraded(); {
		if time.Now().After(deadline) {
			t.Fatal("the breaker did not open")
		}
		_ = r.Set(t.Context(), "k", []byte("v"), time.Minute)
	}
}

// waitClosed waits, without calling r, until its breaker closes, and
// returns how long that took.
func waitClosed(t *testing.T, r *Redis, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for r.Degraded() {
		if time.Since(start) > within {
			t.Fatalf("the breaker is still open %v later, with no call made", within)
		}
		time.Sleep(5 * time.Millisecond) // polling a flag, not waiting for time
	}
	return time.Since(start)
}

// TestBreakerClosesWhenRedisAnswers: with a breaker that would stay open a
// minute, a PING every BreakerProbe closes it as soon as Redis is back,
// before any call is made. Killed and paused servers alike.
func TestBreakerClosesWhenRedisAnswers(t *testing.T) {
	for _, tc := range []struct {
		name        string
		down, up    func(*redistest.Server)
		readTimeout time.Duration
	}{
		{"killed", (*redistest.Server).Stop, func(s *redistest.Server) { s.Restart(t) }, 0},
		{"paused", (*redistest.Server).Pause, (*redistest.Server).Resume, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			var tr transitions
			r := newTestRedis(t, RedisOptions{
				URL: srv.URL(), BreakerFailures: 2, BreakerOpen: time.Minute, BreakerProbe: 50 * time.Millisecond,
				ReadTimeout: tc.readTimeout, OnStateChange: tr.record,
			})
			mustSet(t, r, "k", []byte("v"), time.Minute)
			tc.down(srv)
			openBreaker(t, r)
			if _, err := r.Get(t.Context(), "k"); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Get while open = %v, want ErrUnavailable", err)
			}
			time.Sleep(200 * time.Millisecond) // a few failed PINGs
			if !r.Degraded() {
				t.Fatal("the breaker closed while Redis was down")
			}
			tc.up(srv)
			took := waitClosed(t, r, 10*time.Second)
			t.Logf("breaker closed %v after Redis came back (PING every 50ms, BreakerOpen 1m)", took)
			if got := tr.get(); len(got) != 2 || !got[0] || got[1] {
				t.Fatalf("OnStateChange calls = %v, want [true false]", got)
			}
			mustSet(t, r, "k", []byte("v2"), time.Minute)
			mustGet(t, r, "k", []byte("v2"))

			// It opens and recovers again: the watch restarts each time.
			tc.down(srv)
			openBreaker(t, r)
			tc.up(srv)
			waitClosed(t, r, 10*time.Second)
			if got := tr.get(); len(got) != 4 {
				t.Fatalf("OnStateChange calls = %v, want [true false true false]", got)
			}
		})
	}
}

// TestBreakerClosesOnSwitchMaster: in Sentinel mode, with PINGs off and a
// breaker that would stay open a minute, the Sentinel's +switch-master
// notice after a killed master closes it at once.
func TestBreakerClosesOnSwitchMaster(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a Sentinel failover")
	}
	f := redistest.StartFailover(t)
	var tr transitions
	r := newTestRedis(t, RedisOptions{
		Mode: ModeSentinel, Addrs: []string{f.SentinelAddr()}, MasterName: f.MasterName(),
		BreakerFailures: 2, BreakerOpen: time.Minute, BreakerProbe: -1, OnStateChange: tr.record,
	})
	mustSet(t, r, "k", []byte("v"), time.Minute)
	notices := f.SwitchNotices(t)
	f.Master().Stop()
	openBreaker(t, r)
	var promoted time.Time
	select {
	case promoted = <-notices:
	case <-time.After(20 * time.Second):
		t.Fatal("no failover within 20s")
	}
	waitClosed(t, r, 5*time.Second)
	t.Logf("breaker closed %v after the +switch-master notice (BreakerOpen 1m, no PINGs)", time.Since(promoted))
	mustSet(t, r, "k", []byte("v2"), time.Minute)
	mustGet(t, r, "k", []byte("v2"))
	if got := tr.get(); len(got) != 2 || !got[0] || got[1] {
		t.Fatalf("OnStateChange calls = %v, want [true false]", got)
	}
}
