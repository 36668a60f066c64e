package broker_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestSentinelFailoverUnderLoad fails a Sentinel-managed Redis over, once
// gracefully (SENTINEL FAILOVER) and once by killing the master, under a
// steady load on two replicas with a short L1TTL: no request fails, token
// calls stay within the distinct users (plus a few), and tokens are stored
// in Redis again within a second of the promotion.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("Sentinel failovers under load")
	}
	for _, tc := range []struct {
		name string
		fail func(*testing.T, *redistest.Failover)
	}{
		{"graceful", func(t *testing.T, f *redistest.Failover) { f.Promote(t) }},
		{"killed master", func(_ *testing.T, f *redistest.Failover) { f.Master().Stop() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := redistest.StartFailover(t)
			clk := newClock()
			tn, err := qliktest.New(qliktest.WithClock(clk.Now))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(tn.Close)
			tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
			kr := newKeyring(t, "k1")
			replica := func() *env {
				return newEnv(t, envOptions{clock: clk, tenant: tn, keyring: kr, tune: shortL1,
					shared: newRedisClient(t, cache.RedisOptions{Mode: cache.ModeSentinel, Addrs: []string{f.SentinelAddr()}, MasterName: f.MasterName()})})
			}
			replicas := []*env{replica(), replica()}
			tickClock(t, clk)
			const users = 50
			ids, sessions := warmUsers(t, replicas, users, "warm")
			before := tn.Calls(qliktest.EndpointToken)

			// Writes: four writers each ask the first replica for a new user's
			// token every 20ms and check that it reached the master the
			// Sentinel names.
			master := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: f.MasterName(), SentinelAddrs: []string{f.SentinelAddr()}, MaxRetries: -1})
			t.Cleanup(func() { _ = master.Close() })
			type write struct {
				at     time.Time
				stored bool
			}
			var (
				writesMu sync.Mutex
				writes   []write
				newUsers int
			)
			ctx, stop := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					r := replicas[0]
					for i := 0; ctx.Err() == nil; i++ {
						id := r.tenant.AddUser(qliktest.User{Name: fmt.Sprintf("new%d-%04d", w, i), Status: "active"}).ID
						start := time.Now()
						code, _ := getToken(r.srv.Client(), r.srv.URL, r.session(id))
						n, _ := master.Exists(ctx, r.broker.TokenKey("userId", id)).Result()
						writesMu.Lock()
						newUsers++
						writes = append(writes, write{start, code == 200 && n == 1})
						writesMu.Unlock()
						time.Sleep(20 * time.Millisecond)
					}
				})
			}
			notices := f.SwitchNotices(t)
			res, wait := steadyLoad(ctx, replicas, ids, sessions, 4)
			time.Sleep(time.Second)
			failedAt := time.Now()
			tc.fail(t, f)
			var promoted time.Time
			select {
			case promoted = <-notices:
			case <-time.After(20 * time.Second):
				t.Fatal("no failover within 20s")
			}
			time.Sleep(2 * time.Second)
			stop()
			wait()
			wg.Wait()

			// The first token a replica stored after the promotion.
			slices.SortFunc(writes, func(a, b write) int { return a.at.Compare(b.at) })
			back := time.Duration(-1)
			lost := 0
			for _, w := range writes {
				if !w.at.Before(promoted) && w.stored {
					back = max(w.at.Sub(promoted), 0)
					break
				}
				if !w.at.Before(failedAt) && !w.stored {
					lost++
				}
			}
			calls := tn.Calls(qliktest.EndpointToken) - before
			t.Logf("%s failover: promotion %v after the trigger; first token stored %v after the promotion (%d new users' tokens not stored before it); "+
				"%d requests, %d failed; %d token calls for %d new users and %d users holding tokens (L1TTL %v)",
				tc.name, promoted.Sub(failedAt).Round(time.Millisecond), back.Round(time.Millisecond), lost,
				res.requests.Load(), res.failed.Load(), calls, newUsers, users, shortL1TTL)
			if n := res.failed.Load(); n > 0 {
				t.Errorf("%d requests failed; first: %s", n, res.firstFailure)
			}
			// Users holding tokens cost nothing. A new user whose token
			// could not be stored while Redis had no master may be minted
			// once more by the other replica; on a quiet machine that is
			// none or a few, on a loaded one the window is longer.
			if limit := int64(newUsers + lost + 3); int64(calls) > limit {
				t.Errorf("%d token calls, want at most %d (the new users, one more for each of the %d whose token could not be stored, plus 3)", calls, limit, lost)
			}
			if back < 0 || back > time.Second {
				t.Errorf("tokens stored again %v after the promotion, want within 1s", back)
			}
		})
	}
}
