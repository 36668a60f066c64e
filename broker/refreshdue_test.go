package broker_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// callLog wraps the tenant's Issuer on every replica and records, in
// arrival order, whom each token call was for and when it left (real
// time: the shared limit runs on Redis's clock).
type callLog struct {
	broker.Issuer
	mu    sync.Mutex
	users []string
	at    []time.Time
}

func (l *callLog) ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error) {
	l.mu.Lock()
	l.users = append(l.users, user.Value)
	l.at = append(l.at, time.Now())
	l.mu.Unlock()
	return l.Issuer.ImpersonationToken(ctx, creds, user, scope)
}

func (l *callLog) snapshot() ([]string, []time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.users...), append([]time.Time(nil), l.at...)
}

// worstWindow returns the largest excess of calls over burst + rate x
// elapsed in any stretch between two recorded calls (0 or less: the limit
// held), and the stretch's size.
func worstWindow(at []time.Time, perMinute float64, burst int) (excess float64, calls int) {
	excess = -1e9
	for i := range at {
		for j := i; j < len(at); j++ {
			allowed := float64(burst) + perMinute*at[j].Sub(at[i]).Minutes()
			if e := float64(j-i+1) - allowed; e > excess {
				excess, calls = e, j-i+1
			}
		}
	}
	return excess, calls
}

// TestRefreshWaveUnderSharedLimit: two replicas under a shared limit of 10
// calls a second (burst 4); 20 tokens minted together all fall due for
// their refresh at once (a morning wave, six hours later) while a storm of
// 12 cold users arrives on both replicas. Every cold request reaches the
// tenant before any refresh; the refreshes are deferred (counted) and go
// once the storm is over; no stretch of time sees more calls than the
// shared limit allows; and no answer carries a token with less than
// MinTokenTTL left, including for users whose token outlived its
// refresh window unrefreshed (they fill interactively).
func TestRefreshWaveUnderSharedLimit(t *testing.T) {
	const perMinute, burst, warm, cold = 600, 4, 20, 12
	log := &callLog{}
	d := sharedRateDeployment(t, 0, perMinute, burst, func(c *broker.Config) {
		c.FetchTimeout = 20 * time.Second
		if log.Issuer == nil {
			log.Issuer = c.Tenants[0].Issuer
		}
		c.Tenants[0].Issuer = log
	})
	a, b := d.add(d.keyring), d.add(d.keyring)
	reps := []*env{a, b}
	const minTTL = 10 * time.Minute // the default MinTokenTTL

	var checkMu sync.Mutex
	var short []string
	get := func(r *env, sess string) (int, string) {
		resp, body := r.do("GET", "/v1/token", sess, nil)
		if resp.StatusCode != 200 {
			return resp.StatusCode, string(body)
		}
		tb := decodeTokenBody(t, body)
		if left := time.Duration(tb.ExpiresIn) * time.Second; left < minTTL {
			checkMu.Lock()
			short = append(short, left.String())
			checkMu.Unlock()
		}
		return 200, tb.AccessToken
	}

	warmIDs := make([]string, warm)
	warmSess := make([]string, warm)
	for i := range warm {
		warmIDs[i] = a.addUser(fmt.Sprintf("wave%02d", i)).ID
		warmSess[i] = a.session(warmIDs[i])
		if code, body := get(reps[i%2], warmSess[i]); code != 200 {
			t.Fatalf("warming: %d %s", code, body)
		}
	}
	// Six hours on, less the refresh-ahead window: every wave token is past
	// its refresh point (spread over 25 minutes) with 29 minutes to live.
	d.clock.Advance(5*time.Hour + 30*time.Minute)
	for i, id := range warmIDs {
		warmSess[i] = a.session(id) // sessions live an hour
	}
	coldIDs := map[string]bool{}
	coldSess := make([]string, cold)
	for i := range cold {
		id := a.addUser(fmt.Sprintf("cold%02d", i)).ID
		coldIDs[id] = true
		coldSess[i] = a.session(id)
	}
	users, _ := log.snapshot()
	skip := len(users)

	var wg sync.WaitGroup
	for i, sess := range coldSess {
		wg.Go(func() {
			if code, body := get(reps[i%2], sess); code != 200 {
				t.Errorf("cold request: %d %s", code, body)
			}
		})
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if u, _ := log.snapshot(); len(u)-skip >= burst || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond) // until the storm is at the shared limit
	}
	// The wave's users ask meanwhile, on both replicas: each is served its
	// cached token and starts a background refresh.
	for i, sess := range warmSess {
		for _, r := range []*env{reps[i%2], reps[(i+1)%2]} {
			if code, body := get(r, sess); code != 200 {
				t.Fatalf("wave user in the refresh window: %d %s", code, body)
			}
		}
	}
	wg.Wait()
	for _, r := range reps {
		r.broker.WaitBackground()
	}
	deferred := 0.0
	for _, r := range reps {
		deferred += testutil.ToFloat64(r.metrics.RefreshDeferrals)
	}

	// After the storm: the deferred refreshes go as the wave's users keep
	// asking, a few seconds apart.
	refreshed := func() int {
		u, _ := log.snapshot()
		n := 0
		for _, id := range u[skip:] {
			if !coldIDs[id] {
				n++
			}
		}
		return n
	}
	for i := 0; refreshed() < warm/2 && i < 20; i++ {
		d.clock.Advance(6 * time.Second)
		time.Sleep(200 * time.Millisecond) // the shared limit refills in real time
		for j, sess := range warmSess {
			get(reps[j%2], sess)
		}
		for _, r := range reps {
			r.broker.WaitBackground()
		}
	}
	order, _ := log.snapshot()
	order = order[skip:]
	refreshes := len(order) - cold
	lastCold, firstRefresh := -1, -1
	for i, u := range order {
		if coldIDs[u] {
			lastCold = i
		} else if firstRefresh < 0 {
			firstRefresh = i
		}
	}
	// Past the refresh window of the tokens not refreshed yet: below
	// MinTokenTTL they are not served; a request fills, interactively.
	d.clock.Advance(20 * time.Minute)
	before := len(order)
	for i, sess := range warmSess {
		if code, body := get(reps[i%2], sess); code != 200 {
			t.Fatalf("wave user past the refresh window: %d %s", code, body)
		}
	}
	all, allAt := log.snapshot()
	filled := len(all) - skip - before
	excess, calls := worstWindow(allAt[skip:], perMinute, burst)

	t.Logf("token calls in order (c = cold request, r = refresh): %s", orderString(order, coldIDs))
	t.Logf("%d wave tokens due at once, %d cold users: %d refresh deferrals counted, %d refresh calls, then %d users filled interactively past their refresh window; worst stretch %d calls, %.1f over the limit (<= 0 holds); %d answers below MinTokenTTL",
		warm, cold, int(deferred), refreshes, filled, calls, excess, len(short))
	if lastCold < 0 || firstRefresh < 0 {
		t.Fatalf("no cold call (%d) or no refresh (%d) reached the tenant", lastCold, firstRefresh)
	}
	if firstRefresh < lastCold {
		t.Errorf("a refresh (call %d) went before a waiting request (call %d)", firstRefresh, lastCold)
	}
	if deferred == 0 {
		t.Error("no refresh was counted as deferred")
	}
	if excess > 1 { // one call of slack for the clocks of Redis and this process
		t.Errorf("%d calls in one stretch, %.1f over burst + rate x time", calls, excess)
	}
	if len(short) > 0 {
		t.Errorf("answers with less than MinTokenTTL left: %v", short)
	}
}
