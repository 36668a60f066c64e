package broker_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestRedisOutage kills redis-server under a bounded load: users with a token
// in L1 and users whose token the tenant can mint keep getting them; once the
// breaker is open no request pays a Redis timeout; when Redis returns the
// broker uses it again without a restart.
func TestRedisOutage(t *testing.T) {
	rs := redistest.Start(t)
	var degraded atomic.Bool
	const readTimeout = 300 * time.Millisecond
	rdb := newRedisClient(t, cache.RedisOptions{
		URL: rs.URL(), ReadTimeout: readTimeout, DialTimeout: readTimeout, WriteTimeout: readTimeout,
		// Long enough that no probe goes to the dead Redis during the load.
		BreakerOpen: time.Second,
		OnStateChange: func(d bool) {
			degraded.Store(d)
		},
	})
	e := newEnv(t, envOptions{shared: rdb})

	const warm = 20
	warmIDs := make([]string, warm)
	warmTokens := make([]string, warm)
	for i := range warm {
		warmIDs[i] = e.addUser(fmt.Sprintf("warm%02d", i)).ID
		_, warmTokens[i] = getToken(e.srv.Client(), e.srv.URL, e.session(warmIDs[i]))
	}

	// The load: 4 workers, 400 requests each, half warm users, half users
	// never seen before. Redis dies after the first 200 requests.
	var (
		mu            sync.Mutex
		failures      []string
		done          atomic.Int64
		slowAfterOpen time.Duration
		coldUsers     = make(chan string, 1000)
	)
	for i := range cap(coldUsers) { // 800 for the load, the rest for recovery
		coldUsers <- e.addUser(fmt.Sprintf("cold%03d", i)).ID
	}
	stopped := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 400 {
				if done.Add(1) == 200 {
					rs.Stop()
					close(stopped)
				}
				openBefore := degraded.Load()
				start := time.Now()
				var user, want string
				if i%2 == 0 {
					user, want = warmIDs[(w*400+i)%warm], warmTokens[(w*400+i)%warm]
				} else {
					user = <-coldUsers
				}
				code, tok := getToken(e.srv.Client(), e.srv.URL, e.session(user))
				elapsed := time.Since(start)
				mu.Lock()
				switch {
				case code != 200:
					failures = append(failures, fmt.Sprintf("%d %s", code, tok))
				case want != "" && tok != want:
					failures = append(failures, "a warm user got a different token")
				case want == "" && e.tokenUser(tok) != user:
					failures = append(failures, "a cold user got someone else's token")
				}
				if openBefore && elapsed > slowAfterOpen {
					slowAfterOpen = elapsed
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	<-stopped
	if len(failures) > 0 {
		t.Fatalf("%d of 1600 requests failed during the outage; first: %s", len(failures), failures[0])
	}
	if !degraded.Load() || testutil.ToFloat64(e.metrics.RedisErrors.WithLabelValues("get")) == 0 {
		t.Fatal("the breaker never opened")
	}
	// The Redis budget per call is the read timeout; with the breaker open
	// requests skip Redis. The bound is loose on purpose (a loaded CI
	// machine is slow): it catches requests that wait for Redis several
	// times over, not milliseconds.
	t.Logf("slowest request while the breaker was open: %v (Redis budget %v)", slowAfterOpen, readTimeout)
	if slowAfterOpen >= 3*readTimeout+time.Second {
		t.Errorf("a request took %v with the breaker open, the Redis budget is %v", slowAfterOpen, readTimeout)
	}

	// Redis returns: after the open interval a probe closes the breaker, and
	// new tokens land in Redis again.
	rs.Restart(t)
	for deadline := time.Now().Add(20 * time.Second); degraded.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("the broker did not go back to Redis")
		}
		getToken(e.srv.Client(), e.srv.URL, e.session(<-coldUsers))
		time.Sleep(10 * time.Millisecond) // the breaker's open interval is real time
	}
	user := <-coldUsers
	_, last := getToken(e.srv.Client(), e.srv.URL, e.session(user))
	n, err := rs.Client(t).Exists(context.Background(), e.broker.TokenKey("userId", user)).Result()
	if err != nil || n != 1 || e.tokenUser(last) != user {
		t.Fatalf("after recovery the token was not stored in Redis: exists=%d err=%v", n, err)
	}
	t.Logf("tenant calls: %d for %d cold users and %d warm ones", e.tenant.Calls(qliktest.EndpointToken), cap(coldUsers)-len(coldUsers), warm)
}

// TestBrokerOnCluster runs two replicas on a real 3-master Redis Cluster: the
// user's keys share a hash slot, so leases, sealing and invalidation work.
func TestBrokerOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster")
	}
	cl := redistest.StartCluster(t, 3)
	clk := newClock()
	tn, err := qliktest.New(qliktest.WithClock(clk.Now), qliktest.WithLatency(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
	kr := newKeyring(t, "k1")
	replica := func() *env {
		return newEnv(t, envOptions{clock: clk, tenant: tn, keyring: kr,
			shared: newRedisClient(t, cache.RedisOptions{Mode: cache.ModeCluster, Addrs: cl.Addrs()})})
	}
	a, b := replica(), replica()
	users := make([]string, 10)
	for i := range users {
		users[i] = a.addUser(fmt.Sprintf("u%d", i)).ID
	}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			r := []*env{a, b}[i%2]
			user := users[i%len(users)]
			code, tok := getToken(r.srv.Client(), r.srv.URL, r.session(user))
			if code != 200 || r.tokenUser(tok) != user {
				t.Errorf("status %d, or a foreign token", code)
			}
		})
	}
	wg.Wait()
	if n := tn.Calls(qliktest.EndpointToken); n != len(users) {
		t.Fatalf("upstream calls = %d over a cluster, want %d", n, len(users))
	}
	if resp, _ := a.do("DELETE", "/v1/token", a.session(users[0]), nil); resp.StatusCode != 204 {
		t.Fatalf("DELETE on a cluster: %d", resp.StatusCode)
	}
}
