package broker_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// Suspect L1 copies (suspect.go): after the invalidation subscription comes
// back, a copy held from before is checked (Redis, the logout tombstone,
// users/me at the tenant) instead of dropped or trusted.

// suspectChecks sums the replicas' suspect checks by result, as
// "accepted=50 confirmed=50".
func suspectChecks(replicas []*env) string {
	sum := map[string]float64{}
	for _, r := range replicas {
		for _, res := range metrics.LabelValues()["token_suspect_checks_total"]["result"] {
			sum[res] += testutil.ToFloat64(r.metrics.SuspectChecks.WithLabelValues(res))
		}
	}
	var parts []string
	for res, n := range sum {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%v", res, n))
		}
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

func suspectCount(r *env, result string) int {
	return int(testutil.ToFloat64(r.metrics.SuspectChecks.WithLabelValues(result)))
}

// waitResubscribed waits until every replica in rs has seen its
// invalidation subscription come back since gens were read, and its Redis
// breaker has closed.
func waitResubscribed(t *testing.T, rs []*env, gens []uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i, r := range rs {
		for r.broker.L1Generation() == gens[i] || r.shared.(interface{ Degraded() bool }).Degraded() {
			if time.Now().After(deadline) {
				t.Fatal("a replica's invalidation subscription or Redis client never came back")
			}
			time.Sleep(10 * time.Millisecond) // go-redis reconnects on its own
		}
	}
}

func generations(rs []*env) []uint32 {
	gens := make([]uint32, len(rs))
	for i, r := range rs {
		gens[i] = r.broker.L1Generation()
	}
	return gens
}

// TestLogoutDuringOutageNotServedAfterEmptyRestart: Ada logs out at replica
// A while Redis is dead; Redis comes back empty. Replica B, which held her
// token in L1 and missed the invalidation, never serves it once its
// subscription is back, and gets her a new one with one token call, ten
// concurrent requests sharing one check. Bob, who did not log out, costs
// no token call and is put back into Redis.
//
// "A gone": A stops before Redis returns, so no logout retry or tombstone
// reaches Redis and the tenant's 401 to users/me is what tells B. "A
// alive": A's retry leaves the tombstone, which tells B without asking the
// tenant.
func TestLogoutDuringOutageNotServedAfterEmptyRestart(t *testing.T) {
	for _, aAlive := range []bool{false, true} {
		name := map[bool]string{false: "A gone", true: "A alive"}[aAlive]
		t.Run(name, func(t *testing.T) {
			d := newDeployment(t, 2, newKeyring(t, "k1"))
			a, b := d.replicas[0], d.replicas[1]
			d.waitSubscribed()
			ada, bob := a.addUser("ada").ID, a.addUser("bob").ID
			adaSess, bobSess := a.session(ada), a.session(bob)
			_, t1 := getToken(a.srv.Client(), a.srv.URL, adaSess)
			_, bobTok := getToken(a.srv.Client(), a.srv.URL, bobSess)
			for _, s := range []string{adaSess, bobSess} {
				getToken(b.srv.Client(), b.srv.URL, s)
			}
			gens := generations(d.replicas)
			minted := d.tenant.Calls(qliktest.EndpointToken)
			checks := d.tenant.Calls(qliktest.EndpointUsersMe)

			d.redis.Stop()
			if resp, body := a.do("DELETE", "/v1/token", adaSess, nil); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("logout at A with Redis dead: %d %s", resp.StatusCode, body)
			}
			if _, err := d.tenant.TokenUser(t1); err == nil {
				t.Fatal("the logout did not revoke Ada's token")
			}
			live := []*env{a, b}
			if !aAlive {
				a.broker.Close() // its logout retry ends with it
				live = []*env{b}
				gens = gens[1:]
			}
			d.redis.Restart(t)
			waitResubscribed(t, live, gens)
			if aAlive {
				a.broker.WaitBackground() // the retry: tombstone, delete, invalidation
			}

			var wg sync.WaitGroup
			var mu sync.Mutex
			var got []string
			for range 10 {
				wg.Go(func() {
					code, tok := getToken(b.srv.Client(), b.srv.URL, adaSess)
					mu.Lock()
					defer mu.Unlock()
					got = append(got, fmt.Sprintf("%d:%s", code, tok))
				})
			}
			wg.Wait()
			for range 5 {
				code, tok := getToken(b.srv.Client(), b.srv.URL, adaSess)
				got = append(got, fmt.Sprintf("%d:%s", code, tok))
			}
			var t2 string
			for _, g := range got {
				code, tok, _ := strings.Cut(g, ":")
				switch {
				case code != "200":
					t.Fatalf("Ada at B after the restart: %s", g)
				case tok == t1:
					t.Fatal("B served the token Ada logged out of")
				case t2 == "":
					t2 = tok
				case tok != t2:
					t.Fatal("B served Ada two different new tokens")
				}
			}
			if b.tokenUser(t2) != ada {
				t.Fatal("Ada's new token acts for someone else")
			}
			if code, tok := getToken(b.srv.Client(), b.srv.URL, bobSess); code != 200 || tok != bobTok {
				t.Fatalf("Bob at B: %d, his own token %v", code, tok == bobTok)
			}
			calls := d.tenant.Calls(qliktest.EndpointToken) - minted
			usersMe := d.tenant.Calls(qliktest.EndpointUsersMe) - checks
			bobBack := keysInRedis(t, d.redis.Client(t), b, []string{bob})
			t.Logf("%s: B answered %d requests for Ada, none with the revoked token; %d token call(s), %d users/me check(s); suspect checks: %s; Bob back in Redis: %v",
				name, len(got), calls, usersMe, suspectChecks([]*env{b}), bobBack == 1)
			if calls != 1 {
				t.Errorf("%d token calls, want 1 (Ada's new token; Bob costs none)", calls)
			}
			if bobBack != 1 {
				t.Error("Bob's token was not put back into Redis")
			}
			if aAlive {
				// B drops Ada's copy on A's invalidation, or finds the
				// tombstone when it checks the copy: no users/me for her.
				if n := suspectCount(b, metrics.SuspectRefused); n != 0 || usersMe != 1 {
					t.Errorf("%d refused checks and %d users/me calls, want 0 and 1 (Bob's)", n, usersMe)
				}
			} else if n := suspectCount(b, metrics.SuspectRefused); n != 1 || usersMe != 2 {
				t.Errorf("%d refused checks and %d users/me calls, want 1 (ten requests, one check) and 2 (Ada's and Bob's)", n, usersMe)
			}
		})
	}
}

// holdLogout is a replica's Redis on which a logout's tombstone and
// deletes fail while held: its logout retry stays pending with Redis up.
type holdLogout struct {
	*cache.Redis
	mu   sync.Mutex
	held bool
}

var errHeld = errors.New("held by the test")

func (h *holdLogout) hold(on bool) { h.mu.Lock(); h.held = on; h.mu.Unlock() }

func (h *holdLogout) isHeld() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.held }

func (h *holdLogout) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if h.isHeld() && strings.HasPrefix(key, "qtb:logout:") {
		return errHeld
	}
	return h.Redis.Set(ctx, key, value, ttl)
}

func (h *holdLogout) Delete(ctx context.Context, key string) error {
	if h.isHeld() {
		return errHeld
	}
	return h.Redis.Delete(ctx, key)
}

// TestPendingLogoutNotHealed: the race the heal had with a logout's
// retry. Ada logs out at A while Redis is dead, then asks again and gets a
// new token, held in A's L1 only. Redis comes back empty while A's logout
// retry cannot finish yet. A's check of the new token (suspect, then due
// again) and its put-back of every token it holds must not store Ada's:
// the retry, once it runs, revokes whatever Redis then holds for her. Bob,
// held beside her, is put back.
func TestPendingLogoutNotHealed(t *testing.T) {
	d := newDeployment(t, 0, newKeyring(t, "k1"))
	d.tune = func(c *broker.Config) { c.L1TTL = time.Minute }
	rc := &holdLogout{Redis: newRedisClient(t, cache.RedisOptions{URL: d.redis.URL()})}
	a := newEnv(t, envOptions{clock: d.clock, tenant: d.tenant, keyring: d.keyring, tune: d.tune, shared: rc})
	d.replicas = append(d.replicas, a)
	d.waitSubscribed()
	ada, bob := a.addUser("ada").ID, a.addUser("bob").ID
	adaSess, bobSess := a.session(ada), a.session(bob)
	_, t1 := getToken(a.srv.Client(), a.srv.URL, adaSess)
	getToken(a.srv.Client(), a.srv.URL, bobSess)
	gens := generations(d.replicas)

	rc.hold(true)
	d.redis.Stop()
	if resp, body := a.do("DELETE", "/v1/token", adaSess, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout with Redis dead: %d %s", resp.StatusCode, body)
	}
	code, t2 := getToken(a.srv.Client(), a.srv.URL, adaSess)
	if code != 200 || t2 == t1 {
		t.Fatalf("Ada after her logout, Redis dead: %d, the old token %v", code, t2 == t1)
	}
	d.redis.Restart(t)
	waitResubscribed(t, d.replicas, gens)
	rdb := d.redis.Client(t)
	adaInRedis := func() bool { return keysInRedis(t, rdb, a, []string{ada}) == 1 }

	// Suspect: checked at the tenant, served, not put back.
	if code, tok := getToken(a.srv.Client(), a.srv.URL, adaSess); code != 200 || tok != t2 {
		t.Fatalf("Ada, suspect copy: %d, her new token %v", code, tok == t2)
	}
	if code, _ := getToken(a.srv.Client(), a.srv.URL, bobSess); code != 200 {
		t.Fatalf("Bob: %d", code)
	}
	// Redis loses everything again; the copies fall due: Ada's check finds
	// her key missing and her logout pending, Bob's puts his back and then
	// every token A holds (in the background). Had Ada's gone back, the
	// retry below would revoke it.
	if err := rdb.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	d.clock.Advance(time.Minute)
	getToken(a.srv.Client(), a.srv.URL, adaSess)
	getToken(a.srv.Client(), a.srv.URL, bobSess)
	bobBack := keysInRedis(t, rdb, a, []string{bob}) == 1
	time.Sleep(100 * time.Millisecond) // the put-back of the rest; the retry is held meanwhile
	heldAda := adaInRedis()

	rc.hold(false)
	a.broker.WakeLogoutRetries()
	a.broker.WaitBackground()
	_, err := d.tenant.TokenUser(t2)
	t.Logf("with A's logout retry pending: Ada's new token in Redis %v, Bob's %v; suspect checks %s; after the retry Ada's new token still valid: %v",
		heldAda, bobBack, suspectChecks(d.replicas), err == nil)
	if heldAda {
		t.Error("Ada's token was put back into Redis while her logout's retry was pending")
	}
	if !bobBack {
		t.Error("Bob's token was not put back")
	}
	if err != nil {
		t.Errorf("the logout's retry revoked the token Ada got after logging out: %v", err)
	}
	if _, err := d.tenant.TokenUser(t1); err == nil {
		t.Error("the token Ada logged out of is still valid")
	}
	if n := suspectCount(a, metrics.SuspectAccepted); n != 2 {
		t.Errorf("%d accepted suspect checks, want 2 (Ada, Bob)", n)
	}
}

// cutOff is a replica's Redis whose reads fail while cut.
type cutOff struct {
	*cache.Redis
	cut atomic.Bool
}

func (c *cutOff) Get(ctx context.Context, key string) ([]byte, error) {
	if c.cut.Load() {
		return nil, errHeld
	}
	return c.Redis.Get(ctx, key)
}

// TestNoUncheckedHealRightAfterRedisErrors: right after this replica's
// Redis failed, a copy whose key is missing is served but not put back
// unchecked (the invalidation subscription may not be back yet, and a
// logout meanwhile unknown); once the hold has passed without errors,
// it is.
func TestNoUncheckedHealRightAfterRedisErrors(t *testing.T) {
	d := newDeployment(t, 0, newKeyring(t, "k1"))
	d.tune = func(c *broker.Config) { c.L1TTL = 2 * time.Second }
	rc := &cutOff{Redis: newRedisClient(t, cache.RedisOptions{URL: d.redis.URL()})}
	b := newEnv(t, envOptions{clock: d.clock, tenant: d.tenant, keyring: d.keyring, tune: d.tune, shared: rc})
	d.replicas = append(d.replicas, b)
	bob := b.addUser("bob").ID
	sess := b.session(bob)
	_, tok := getToken(b.srv.Client(), b.srv.URL, sess)
	rdb := d.redis.Client(t)
	inRedis := func() bool { return keysInRedis(t, rdb, b, []string{bob}) == 1 }

	rc.cut.Store(true)
	d.clock.Advance(2 * time.Second) // due: the check fails
	if code, got := getToken(b.srv.Client(), b.srv.URL, sess); code != 200 || got != tok {
		t.Fatalf("Redis failing: %d, his token %v", code, got == tok)
	}
	rc.cut.Store(false)
	if err := rdb.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	d.clock.Advance(2 * time.Second) // due again: the key is missing
	if code, got := getToken(b.srv.Client(), b.srv.URL, sess); code != 200 || got != tok {
		t.Fatalf("right after: %d, his token %v", code, got == tok)
	}
	heldBack := !inRedis()
	d.clock.Advance(10 * time.Second) // past the hold, no errors since
	getToken(b.srv.Client(), b.srv.URL, sess)
	b.broker.WaitBackground()
	healed := inRedis()
	t.Logf("key missing 2s after a Redis failure: put back %v; 12s after: put back %v; token calls %d",
		!heldBack, healed, d.tenant.Calls(qliktest.EndpointToken))
	if !heldBack {
		t.Error("a copy was put back unchecked right after Redis failed")
	}
	if !healed {
		t.Error("the copy was not put back once the hold had passed")
	}
	if n := d.tenant.Calls(qliktest.EndpointToken); n != 1 {
		t.Errorf("%d token calls, want 1", n)
	}
}

// TestSuspectCopyTenantUnreachable: when Redis came back empty and the
// tenant cannot be asked about a suspect copy (503 to users/me), the copy
// is served as it is, without a token call, by one check for several
// requests, and that check does not put it back into Redis.
func TestSuspectCopyTenantUnreachable(t *testing.T) {
	d := newDeployment(t, 1, newKeyring(t, "k1"))
	r := d.replicas[0]
	d.waitSubscribed()
	ada := r.addUser("ada").ID
	sess := r.session(ada)
	_, tok := getToken(r.srv.Client(), r.srv.URL, sess)
	gens := generations(d.replicas)
	d.redis.Stop()
	d.redis.Restart(t)
	waitResubscribed(t, d.replicas, gens)
	d.tenant.InjectFault(qliktest.EndpointUsersMe, qliktest.Fault{Status: http.StatusServiceUnavailable})
	for range 3 {
		if code, got := getToken(r.srv.Client(), r.srv.URL, sess); code != 200 || got != tok {
			t.Fatalf("suspect copy, tenant unreachable: %d, her token %v", code, got == tok)
		}
	}
	inRedis := keysInRedis(t, d.redis.Client(t), r, []string{ada}) == 1
	t.Logf("tenant unreachable for the check: served her token, %d token call(s), %d users/me; suspect checks %s; put back %v",
		d.tenant.Calls(qliktest.EndpointToken), d.tenant.Calls(qliktest.EndpointUsersMe), suspectChecks(d.replicas), inRedis)
	if n := suspectCount(r, metrics.SuspectUnchecked); n != 1 {
		t.Errorf("%d unchecked suspect checks, want 1 (three requests, one check)", n)
	}
	if inRedis {
		t.Error("an unchecked copy was put back into Redis")
	}
	if n := d.tenant.Calls(qliktest.EndpointToken); n != 1 {
		t.Errorf("%d token calls, want 1", n)
	}
}
