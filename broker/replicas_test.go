package broker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// deployment is several broker replicas sharing one tenant, one clock and
// one real Redis, each with its own L1 and its own Redis connections.
type deployment struct {
	t        *testing.T
	clock    *clock
	tenant   *qliktest.Tenant
	redis    *redistest.Server
	keyring  *cache.Keyring
	replicas []*env
	// tune, when set, adjusts the Config of replicas added after.
	tune func(*broker.Config)
	// session, when set, is the session verifier's Config of replicas
	// added after (key material and checks).
	session session.Config
}

func newKeyring(t *testing.T, ids ...string) *cache.Keyring {
	t.Helper()
	var parts []string
	for _, id := range ids {
		parts = append(parts, id+":"+base64.StdEncoding.EncodeToString(keyBytes(id)))
	}
	k, err := cache.ParseKeyring(strings.Join(parts, ","))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// keyBytes derives a fixed 32-byte key from an id, so a keyring listing the
// same ids in two tests holds the same keys.
func keyBytes(id string) []byte {
	b := bytes.Repeat([]byte(id), 32/len(id)+1)
	return b[:32]
}

func newDeployment(t *testing.T, replicas int, keyring *cache.Keyring, tenantOpts ...qliktest.Option) *deployment {
	t.Helper()
	clk := newClock()
	tn, err := qliktest.New(append([]qliktest.Option{qliktest.WithClock(clk.Now)}, tenantOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
	d := &deployment{t: t, clock: clk, tenant: tn, redis: redistest.Start(t), keyring: keyring}
	for range replicas {
		d.add(keyring)
	}
	return d
}

// add starts one more replica, with its own keyring.
func (d *deployment) add(keyring *cache.Keyring) *env {
	d.t.Helper()
	e := newEnv(d.t, envOptions{
		clock: d.clock, tenant: d.tenant, keyring: keyring, tune: d.tune, session: d.session,
		shared: newRedisClient(d.t, cache.RedisOptions{URL: d.redis.URL()}),
	})
	d.replicas = append(d.replicas, e)
	return e
}

// waitSubscribed waits until every replica listens for invalidations.
func (d *deployment) waitSubscribed() {
	d.t.Helper()
	rdb := d.redis.Client(d.t)
	for range 500 {
		n, err := rdb.PubSubNumSub(context.Background(), cache.InvalidationChannel).Result()
		if err == nil && n[cache.InvalidationChannel] >= int64(len(d.replicas)) {
			return
		}
		time.Sleep(10 * time.Millisecond) // readiness polling, not waiting for time
	}
	d.t.Fatal("replicas never subscribed to invalidations")
}

func (d *deployment) waitBackground() {
	for _, r := range d.replicas {
		r.broker.WaitBackground()
	}
}

// getToken asks a replica for the raw token.
func getToken(client *http.Client, base, session string) (int, string) {
	req, _ := http.NewRequest("GET", base+"/v1/token", nil)
	req.Header.Set("Authorization", "Bearer "+session)
	req.Header.Set("Accept", "text/plain")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestReplicasShareColdFetches: 3 replicas on one Redis, 50 cold users,
// 300 concurrent requests per user spread over the replicas: one upstream
// call per user, and every response carries its own user's token.
func TestReplicasShareColdFetches(t *testing.T) {
	if testing.Short() {
		t.Skip("15,000 requests")
	}
	d := newDeployment(t, 3, newKeyring(t, "k1"), qliktest.WithLatency(50*time.Millisecond))
	const users, perUser = 50, 300
	type job struct{ user, replica int }
	ids := make([]string, users)
	sessions := make([]string, users)
	var jobs []job
	for u := range users {
		ids[u] = d.replicas[0].addUser(fmt.Sprintf("user%02d", u)).ID
		sessions[u] = d.replicas[0].session(ids[u])
		for i := range perUser {
			jobs = append(jobs, job{u, i % 3})
		}
	}
	mrand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 300}}
	defer client.CloseIdleConnections()
	var (
		mu       sync.Mutex
		tokenFor = map[string]int{} // token -> user
		failures []string
	)
	work := make(chan job)
	var wg sync.WaitGroup
	for range 300 {
		wg.Go(func() {
			for j := range work {
				code, tok := getToken(client, d.replicas[j.replica].srv.URL, sessions[j.user])
				mu.Lock()
				if code != 200 {
					failures = append(failures, fmt.Sprintf("user %d replica %d: %d %s", j.user, j.replica, code, tok))
				} else if prev, seen := tokenFor[tok]; seen && prev != j.user {
					failures = append(failures, fmt.Sprintf("token of user %d served to user %d", prev, j.user))
				} else {
					tokenFor[tok] = j.user
				}
				mu.Unlock()
			}
		})
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d failures, first: %s", len(failures), failures[0])
	}
	if n := d.tenant.Calls(qliktest.EndpointToken); n != users {
		t.Fatalf("upstream token calls = %d, want %d (one per user)", n, users)
	}
	if len(tokenFor) != users {
		t.Fatalf("%d distinct tokens for %d users", len(tokenFor), users)
	}
	for tok, u := range tokenFor {
		if got := d.replicas[0].tokenUser(tok); got != ids[u] {
			t.Fatalf("token served to user %d acts for %s", u, got)
		}
	}
	var waited float64
	for _, r := range d.replicas {
		waited += testutil.ToFloat64(r.metrics.Leases.WithLabelValues(metrics.LeaseWaited))
	}
	t.Logf("leases: %d acquired in all; %v fills waited for another replica", users, waited)
}

// TestRefreshAheadOneRefreshPerKey: inside the refresh window every replica
// keeps serving the old token at once while exactly one refresh happens.
func TestRefreshAheadOneRefreshPerKey(t *testing.T) {
	d := newDeployment(t, 3, newKeyring(t, "k1"))
	ada := d.replicas[0].addUser("Ada")
	sess := d.replicas[0].session(ada.ID)
	_, old := getToken(d.replicas[0].srv.Client(), d.replicas[0].srv.URL, sess)
	for _, r := range d.replicas[1:] {
		if _, tok := getToken(r.srv.Client(), r.srv.URL, sess); tok != old {
			t.Fatal("replicas disagree before the window")
		}
	}
	// 6h token, 60s skew, 1h window, 10m minimum: every refresh point is
	// within the window's first 25 minutes, so 5h30m is past all of them.
	d.clock.Advance(5*time.Hour + 30*time.Minute)
	sess = d.replicas[0].session(ada.ID) // the app's session is renewed too

	var wg sync.WaitGroup
	var stale atomic.Int32
	for i := range 90 {
		wg.Go(func() {
			r := d.replicas[i%3]
			code, tok := getToken(r.srv.Client(), r.srv.URL, sess)
			if code != 200 {
				t.Errorf("status %d: %s", code, tok)
			}
			if tok == old {
				stale.Add(1)
			}
		})
	}
	wg.Wait()
	d.waitBackground()
	if n := d.tenant.UserTokenCalls(ada.ID); n != 2 {
		t.Fatalf("upstream calls = %d, want 2 (the first fetch and exactly one refresh)", n)
	}
	t.Logf("%d of 90 requests in the window got the old token without waiting", stale.Load())

	// A moment later every replica serves the new token (the others adopt
	// it from Redis), still without another upstream call.
	d.clock.Advance(2 * time.Second)
	for _, r := range d.replicas {
		getToken(r.srv.Client(), r.srv.URL, sess) // may still be the old one: it triggers adoption
	}
	d.waitBackground()
	var fresh string
	for i, r := range d.replicas {
		_, tok := getToken(r.srv.Client(), r.srv.URL, sess)
		if tok == old {
			for _, res := range []string{"refreshed", "adopted", "skipped", "error"} {
				t.Logf("replica %d %s %v", i, res, testutil.ToFloat64(r.metrics.Refreshes.WithLabelValues(res)))
			}
			t.Fatalf("replica %d still serves the old token after adopting", i)
		}
		if fresh == "" {
			fresh = tok
		} else if tok != fresh {
			t.Fatal("replicas serve different refreshed tokens")
		}
	}
	if d.replicas[0].tokenUser(fresh) != ada.ID {
		t.Fatal("the refreshed token acts for someone else")
	}
	if n := d.tenant.UserTokenCalls(ada.ID); n != 2 {
		t.Fatalf("upstream calls = %d after adoption, want 2", n)
	}
	var refreshed, adopted float64
	for _, r := range d.replicas {
		refreshed += testutil.ToFloat64(r.metrics.Refreshes.WithLabelValues(metrics.RefreshRefreshed))
		adopted += testutil.ToFloat64(r.metrics.Refreshes.WithLabelValues(metrics.RefreshAdopted))
	}
	t.Logf("refreshes: %v refreshed, %v adopted by other replicas", refreshed, adopted)
	if refreshed != 1 {
		t.Fatalf("refreshes: %v refreshed, %v adopted", refreshed, adopted)
	}
}

// TestRefreshesSpreadOverWindow caches 1,000 users at one instant and walks
// the clock through the refresh window: refreshes are spread over it, not
// bunched.
func TestRefreshesSpreadOverWindow(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	const users = 1000
	ids := make([]session.Identity, users)
	for i := range users {
		ids[i] = session.Identity{UserField: "userId", UserValue: e.addUser(fmt.Sprintf("u%04d", i)).ID}
		if _, err := e.broker.Token(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	// Window 1h starts at 4h59m (6h - 60s skew - 1h); points spread over
	// its first (1h-10m)/2 = 25m. Walk it in 2.5-minute buckets.
	e.clock.Advance(4*time.Hour + 59*time.Minute)
	const buckets = 10
	counts := make([]int, buckets+1)
	issued := e.tenant.IssuedTokens()
	for b := range buckets + 1 {
		for _, id := range ids {
			if _, err := e.broker.Token(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		e.broker.WaitBackground()
		now := e.tenant.IssuedTokens()
		counts[b], issued = now-issued, now
		e.clock.Advance(150 * time.Second)
	}
	var hist strings.Builder
	total := 0
	for b, c := range counts {
		total += c
		fmt.Fprintf(&hist, "\n  %5.1f min  %4d %s", float64(b)*2.5, c, strings.Repeat("#", c/5))
	}
	t.Logf("refreshes per 2.5-minute step into the window:%s", hist.String())
	if total != users {
		t.Fatalf("%d refreshes, want %d", total, users)
	}
	// Uniform over 10 buckets: 100 each. A chi-square over 10 buckets
	// stays under 30 with overwhelming probability for uniform data;
	// bunching (e.g. all at the window's start) gives thousands.
	chi := 0.0
	for _, c := range counts[1:] {
		chi += math.Pow(float64(c)-100, 2) / 100
	}
	if counts[0] > 100/2+50 || chi > 30 {
		t.Fatalf("refreshes are bunched: chi-square %.1f, first step %d", chi, counts[0])
	}
}

// TestNeverServesBelowMinTTL walks the clock through two token lifetimes,
// with every refresh failing, and checks no response ever has less than
// the minimum life left.
func TestNeverServesBelowMinTTL(t *testing.T) {
	e := newEnv(t, envOptions{tune: func(c *broker.Config) { c.Upstream.Retries = 0 }})
	ada := e.addUser("Ada")
	minLeft := int64((10 * time.Minute).Seconds())
	for step := range 12 * 60 / 3 {
		if e.tenant.PendingFaults(qliktest.EndpointToken) == 0 && e.tenant.Calls(qliktest.EndpointToken)%2 == 0 {
			// Every other token call fails (no retries here), so half the
			// refreshes fail and are tried again later; the token must
			// still never age below the minimum.
			e.tenant.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 503})
		}
		resp, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
		if resp.StatusCode == 200 {
			if tb := decodeTokenBody(t, body); tb.ExpiresIn < minLeft {
				t.Fatalf("step %d: served a token with %ds left, minimum %d", step, tb.ExpiresIn, minLeft)
			}
		} else if resp.StatusCode != 502 {
			t.Fatalf("step %d: status %d: %s", step, resp.StatusCode, body)
		}
		e.broker.WaitBackground()
		e.clock.Advance(3 * time.Minute)
	}
}

// TestLogoutDropsTokenFromEveryReplica: DELETE on replica A and replica B
// stops serving the token from its L1.
func TestLogoutDropsTokenFromEveryReplica(t *testing.T) {
	d := newDeployment(t, 2, nil)
	d.waitSubscribed()
	a, b := d.replicas[0], d.replicas[1]
	ada := a.addUser("Ada")
	sess := a.session(ada.ID)
	_, old := getToken(a.srv.Client(), a.srv.URL, sess)
	if _, tok := getToken(b.srv.Client(), b.srv.URL, sess); tok != old {
		t.Fatal("B does not serve A's token")
	}
	if resp, _ := a.do("DELETE", "/v1/token", sess, nil); resp.StatusCode != 204 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	start := time.Now()
	for {
		_, tok := getToken(b.srv.Client(), b.srv.URL, sess)
		if tok != old {
			t.Logf("B dropped the token %v after the DELETE on A", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > time.Second {
			t.Fatal("B still serves the revoked token from L1 a second after the DELETE on A")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSealing: what Redis holds is useless without the keyring; tampered,
// foreign and misplaced values are misses that lead to a fresh token; a
// rotated keyring still opens old values.
func TestSealing(t *testing.T) {
	d := newDeployment(t, 1, newKeyring(t, "k1"))
	a := d.replicas[0]
	ada, bob := a.addUser("Ada"), a.addUser("Bob")
	_, adaTok := getToken(a.srv.Client(), a.srv.URL, a.session(ada.ID))
	_, bobTok := getToken(a.srv.Client(), a.srv.URL, a.session(bob.ID))
	rdb := d.redis.Client(t)
	ctx := context.Background()
	adaKey, bobKey := a.broker.TokenKey("userId", ada.ID), a.broker.TokenKey("userId", bob.ID)

	keys, err := rdb.Keys(ctx, "qtb:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys in Redis: %v %v", keys, err)
	}
	for _, k := range keys {
		raw, _ := rdb.Get(ctx, k).Bytes()
		if bytes.Contains(raw, []byte(adaTok)) || bytes.Contains(raw, []byte(bobTok)) || strings.Contains(k, ada.ID) || strings.Contains(k, bob.ID) {
			t.Fatalf("Redis key %q or its value exposes a token or user id", k)
		}
	}

	// Each check reads through a fresh replica (an empty L1).
	fetch := func(keyring *cache.Keyring, user string) string {
		r := d.add(keyring)
		code, tok := getToken(r.srv.Client(), r.srv.URL, r.session(user))
		if code != 200 || r.tokenUser(tok) != user {
			t.Fatalf("status %d, or the token is not %s's", code, user)
		}
		return tok
	}
	calls := func() int { return d.tenant.Calls(qliktest.EndpointToken) }

	// Rotation: k2 is appended and seals from now on; k1 values still open.
	before := calls()
	if tok := fetch(newKeyring(t, "k1", "k2"), ada.ID); tok != adaTok || calls() != before {
		t.Fatal("a rotated keyring does not serve the entry sealed under the old key")
	}

	// A value copied to another user's key fails authentication: Bob gets
	// a fresh token of his own, never Ada's.
	raw, _ := rdb.Get(ctx, adaKey).Bytes()
	if err := rdb.Set(ctx, bobKey, raw, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if tok := fetch(newKeyring(t, "k1"), bob.ID); tok == adaTok || calls() != before+1 {
		t.Fatal("a value copied between keys was served")
	}

	// Tampering: flip the last byte of Ada's value.
	raw[len(raw)-1] ^= 1
	rdb.Set(ctx, adaKey, raw, time.Hour)
	if tok := fetch(newKeyring(t, "k1"), ada.ID); tok == adaTok || calls() != before+2 {
		t.Fatal("a tampered value was served")
	}

	// A value sealed under a key the reader lacks is a miss. The writer
	// seals with k2; the reader shares the oldest key k1 (so the key names
	// match) but knows k3, not k2.
	cy := a.addUser("Cy")
	cyTok := fetch(newKeyring(t, "k1", "k2"), cy.ID)
	if tok := fetch(newKeyring(t, "k1", "k3"), cy.ID); tok == cyTok || calls() != before+4 {
		t.Fatal("a value sealed under an unknown key was served")
	}
	sum := func(reason string) (n float64) {
		for _, rep := range d.replicas {
			n += testutil.ToFloat64(rep.metrics.UnsealFailures.WithLabelValues(reason))
		}
		return n
	}
	if sum("tampered") != 2 || sum("unknown_key") != 1 {
		t.Fatalf("unseal failures: tampered %v (want 2), unknown_key %v (want 1)", sum("tampered"), sum("unknown_key"))
	}
}
