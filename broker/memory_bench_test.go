package broker_test

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// cachedUsersHeapProfile names the heap profile BenchmarkCachedUsers writes
// with its largest population still cached (docs/benchmarks.md).
var cachedUsersHeapProfile = flag.String("cachedusers.heapprofile", "", "BenchmarkCachedUsers: write the heap profile at the largest population here")

// BenchmarkCachedUsers warms one broker as the bench's memory step runs it
// (Redis, sealing, default L1) with n users through Broker.Token and
// reports the live heap each cached user takes after a GC: the broker's
// own bytes, without the RSS a process adds around them (GC headroom,
// runtime). The tenant is a stub handing out tokens of a real fake
// tenant's length, so its memory is not counted. Run it once:
//
//	go test -run XXX -bench BenchmarkCachedUsers -benchtime 1x ./broker
func BenchmarkCachedUsers(b *testing.B) {
	proto := realToken(b)
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("users=%d", n), func(b *testing.B) {
			profile := n == 100000 && *cachedUsersHeapProfile != ""
			if profile {
				runtime.MemProfileRate = 4096
			}
			for b.Loop() {
				live, perUser := cachedUsersLive(b, proto, n, profile)
				b.ReportMetric(float64(perUser), "live-B/user")
				b.ReportMetric(float64(live)/(1<<20), "live-MiB")
			}
		})
	}
}

// cachedUsersLive returns the live heap of a broker holding n users and
// its growth per user over the same broker holding none.
func cachedUsersLive(b *testing.B, proto qlik.Token, n int, profile bool) (live uint64, perUser int64) {
	b.Helper()
	shared := benchRedis(b)
	issuer := &stubIssuer{proto: proto}
	br, err := broker.New(broker.Config{
		Tenants: []broker.Tenant{{ID: "acme", Issuer: issuer, Credentials: qlik.Credentials{ClientID: "client-1", ClientSecret: "secret-1"}, Scope: "user_default"}},
		Shared:  shared,
		Keyring: newKeyring(&testing.T{}, "k1"),
		Metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{}),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	before := liveHeap()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				// A fresh string per user, as a session's verification
				// makes one.
				id := session.Identity{UserField: "userId", UserValue: userID(i)}
				if _, err := br.Token(context.Background(), id); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	if got := issuer.calls.Load(); got != int64(n) {
		b.Fatalf("%d token calls for %d users", got, n)
	}
	after := liveHeap()
	if profile {
		f, err := os.Create(*cachedUsersHeapProfile)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
	}
	runtime.KeepAlive(br)
	return after, (int64(after) - int64(before)) / int64(n)
}

// liveHeap is the heap still reachable after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// userID is a Qlik user id like the fake tenant's: 24 hex digits.
func userID(i int64) string {
	var raw [12]byte
	for j := range 8 {
		raw[11-j] = byte(i >> (8 * j))
	}
	return hex.EncodeToString(raw[:])
}

// realToken is one token of the fake tenant, for its length and shape.
func realToken(b *testing.B) qlik.Token {
	b.Helper()
	tn, err := qliktest.New()
	if err != nil {
		b.Fatal(err)
	}
	defer tn.Close()
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
	user := tn.AddUser(qliktest.User{Name: "Ada", Status: "active"})
	qc, err := qlik.New(tn.URL(), qlik.Options{})
	if err != nil {
		b.Fatal(err)
	}
	tok, err := qc.ImpersonationToken(context.Background(), qlik.Credentials{ClientID: oc.ID, ClientSecret: oc.Secret},
		qlik.UserLookup{Field: "userId", Value: user.ID}, "user_default")
	if err != nil {
		b.Fatal(err)
	}
	return *tok
}

// stubIssuer hands out proto with the end of its signature made unique per
// call, in fresh strings as a decoded tenant answer has them.
type stubIssuer struct {
	proto qlik.Token
	calls atomic.Int64
}

func (s *stubIssuer) ImpersonationToken(_ context.Context, _ qlik.Credentials, _ qlik.UserLookup, scope string) (*qlik.Token, error) {
	n := s.calls.Add(1)
	tail := fmt.Sprintf("%016x", n)
	tok := s.proto
	tok.AccessToken = tok.AccessToken[:len(tok.AccessToken)-len(tail)] + tail
	tok.Scope = strings.Clone(scope)
	tok.ExpiresAt = time.Now().Add(6 * time.Hour)
	return &tok, nil
}

func (s *stubIssuer) ClientCredentialsToken(context.Context, qlik.Credentials, string) (*qlik.Token, error) {
	return nil, fmt.Errorf("stub: no client token")
}

func (s *stubIssuer) Revoke(context.Context, qlik.Credentials, string) error { return nil }
