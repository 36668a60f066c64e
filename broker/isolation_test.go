package broker_test

import (
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestIsolationUnderLoad: 500 users, 20,000 concurrent requests from a pool
// of 200 workers, spread at random over two replicas sharing one Redis, with
// GET and POST, JSON and text answers mixed. Every token served must act for
// the user whose session asked for it, as the tenant itself says.
func TestIsolationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("20,000 requests")
	}
	const users, requests, workers = 500, 20_000, 200
	d := newDeployment(t, 2, newKeyring(t, "k1"), qliktest.WithLatency(5*time.Millisecond))

	ids := make([]string, users)
	sessions := make([]string, users)
	for u := range users {
		ids[u] = d.replicas[0].addUser(fmt.Sprintf("iso%03d", u)).ID
		sessions[u] = d.replicas[0].session(ids[u])
	}

	type job struct {
		user, replica int
		method        string
		text          bool
	}
	jobs := make(chan job)
	go func() {
		defer close(jobs)
		for range requests {
			jobs <- job{
				user: mrand.IntN(users), replica: mrand.IntN(len(d.replicas)),
				method: []string{"GET", "POST"}[mrand.IntN(2)], text: mrand.IntN(2) == 0,
			}
		}
	}()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()

	var (
		mu         sync.Mutex
		owner      = map[string]string{} // access token -> the user the tenant says it acts for
		failures   []string
		mismatches atomic.Int64
		ok         atomic.Int64
	)
	// tokenOwner asks the tenant once per distinct token.
	tokenOwner := func(tok string) (string, error) {
		mu.Lock()
		u, seen := owner[tok]
		mu.Unlock()
		if seen {
			return u, nil
		}
		usr, err := d.tenant.TokenUser(tok)
		if err != nil {
			return "", err
		}
		mu.Lock()
		owner[tok] = usr.ID
		mu.Unlock()
		return usr.ID, nil
	}
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}

	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for j := range jobs {
				req, _ := http.NewRequest(j.method, d.replicas[j.replica].srv.URL+"/v1/token", nil)
				req.Header.Set("Authorization", "Bearer "+sessions[j.user])
				if j.text {
					req.Header.Set("Accept", "text/plain")
				}
				resp, err := client.Do(req)
				if err != nil {
					fail("user %d: %v", j.user, err)
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					fail("user %d: reading the answer: %v", j.user, err)
					continue
				}
				if resp.StatusCode != 200 {
					fail("user %d replica %d: %d %s", j.user, j.replica, resp.StatusCode, body)
					continue
				}
				tok := string(body)
				if !j.text {
					var tb tokenBody
					if err := json.Unmarshal(body, &tb); err != nil {
						fail("user %d: token body %q: %v", j.user, body, err)
						continue
					}
					tok = tb.AccessToken
				}
				got, err := tokenOwner(tok)
				switch {
				case err != nil:
					fail("user %d: the tenant refuses the served token: %v", j.user, err)
				case got != ids[j.user]:
					mismatches.Add(1)
					fail("user %d (%s) was served a token acting for %s", j.user, ids[j.user], got)
				default:
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	if n := mismatches.Load(); n != 0 {
		t.Errorf("%d responses carried another user's token", n)
	}
	for _, f := range failures {
		t.Error(f)
	}
	if ok.Load() != requests {
		t.Fatalf("%d of %d requests got their own user's token", ok.Load(), requests)
	}
	// Each user has exactly one token, and it is that user's.
	perUser := map[string]int{}
	for _, u := range owner {
		perUser[u]++
	}
	if len(perUser) != users {
		t.Errorf("%d users got tokens, want %d", len(perUser), users)
	}
	t.Logf("%d requests in %s (%.0f/s), %d distinct tokens, %d upstream token calls, 0 mismatches",
		requests, elapsed.Round(time.Millisecond), float64(requests)/elapsed.Seconds(), len(owner), d.tenant.Calls(qliktest.EndpointToken))
}
