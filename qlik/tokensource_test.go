package qlik_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// fakeSource counts its calls and answers each with a token named after the
// call ("t1", "t2", ...) living life from the clock's now, or with errFake
// while failNext is set. gate, when set, holds every call until it is
// closed, and entered is signalled as each call begins.
type fakeSource struct {
	clock    *clocktest.Clock
	life     time.Duration
	calls    atomic.Int32
	failNext atomic.Bool
	gate     chan struct{}
	entered  chan struct{}
}

var errFake = errors.New("fake: tenant unreachable")

func (s *fakeSource) Token(ctx context.Context) (*qlik.Token, error) {
	n := s.calls.Add(1)
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if s.failNext.Swap(false) {
		return nil, errFake
	}
	tok := &qlik.Token{AccessToken: fmt.Sprintf("t%d", n), TokenType: "bearer"}
	if s.life > 0 {
		tok.ExpiresAt = s.clock.Now().Add(s.life)
	}
	return tok, nil
}

func TestReuseTokenSource(t *testing.T) {
	// step is one call to Token after advancing the clock; want is the
	// token it returns ("" for errFake) and fetches the calls src has had.
	type step struct {
		advance time.Duration
		fail    bool
		want    string
		fetches int32
	}
	tests := []struct {
		name        string
		life, early time.Duration // life 0: tokens without an expiry
		steps       []step
	}{
		{"reused until early before expiry", time.Hour, 5 * time.Minute, []step{
			{0, false, "t1", 1},
			{30 * time.Minute, false, "t1", 1},
			{25*time.Minute - time.Nanosecond, false, "t1", 1}, // 5m+1ns left
		}},
		{"refetched at early before expiry", time.Hour, 5 * time.Minute, []step{
			{0, false, "t1", 1},
			{55 * time.Minute, false, "t2", 2}, // exactly 5m left
			{time.Minute, false, "t2", 2},
		}},
		{"refetched after expiry", time.Hour, 5 * time.Minute, []step{
			{0, false, "t1", 1},
			{2 * time.Hour, false, "t2", 2},
		}},
		{"zero early: reused until expiry", time.Hour, 0, []step{
			{0, false, "t1", 1},
			{time.Hour - time.Nanosecond, false, "t1", 1},
			{time.Nanosecond, false, "t2", 2},
		}},
		{"negative early counts as zero", time.Hour, -time.Hour, []step{
			{0, false, "t1", 1},
			{time.Hour - time.Nanosecond, false, "t1", 1},
			{time.Nanosecond, false, "t2", 2},
		}},
		{"a token shorter-lived than early is fetched every time", time.Minute, 5 * time.Minute, []step{
			{0, false, "t1", 1},
			{0, false, "t2", 2},
		}},
		{"no expiry: reused for ever", 0, 5 * time.Minute, []step{
			{0, false, "t1", 1},
			{1000 * time.Hour, false, "t1", 1},
		}},
		{"a failure is not cached", time.Hour, 5 * time.Minute, []step{
			{0, true, "", 1},
			{0, false, "t2", 2},
			{0, false, "t2", 2},
		}},
		{"a failed refetch keeps failing over to the source", time.Hour, 5 * time.Minute, []step{
			{0, false, "t1", 1},
			{56 * time.Minute, true, "", 2},
			{0, true, "", 3},
			{0, false, "t4", 4},
			{10 * time.Minute, false, "t4", 4}, // t4 was made 10m ago: 50m left
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clocktest.New(start)
			src := &fakeSource{clock: clk, life: tt.life}
			ts := qlik.ReuseTokenSource(src, tt.early, clk.Now)
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				src.failNext.Store(s.fail)
				tok, err := ts.Token(t.Context())
				switch {
				case s.want == "" && !errors.Is(err, errFake):
					t.Errorf("step %d: Token = %v, %v; want errFake", i, tok, err)
				case s.want != "" && (err != nil || tok == nil || tok.AccessToken != s.want):
					t.Errorf("step %d: Token = %v, %v; want %s", i, tok, err, s.want)
				}
				if n := src.calls.Load(); n != s.fetches {
					t.Errorf("step %d: %d fetches, want %d", i, n, s.fetches)
				}
			}
		})
	}
}

// TestReuseTokenSourceCopies checks a caller that changes its token does not
// change what the next caller gets.
func TestReuseTokenSourceCopies(t *testing.T) {
	clk := clocktest.New(start)
	ts := qlik.ReuseTokenSource(&fakeSource{clock: clk, life: time.Hour}, 0, clk.Now)
	first, err := ts.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	first.AccessToken, first.ExpiresAt = "changed", time.Time{}
	again, err := ts.Token(t.Context())
	if err != nil || again.AccessToken != "t1" || !again.ExpiresAt.Equal(start.Add(time.Hour)) {
		t.Errorf("Token = %v, %v; want the untouched t1", again, err)
	}
}

// TestReuseTokenSourceConcurrent: callers arriving while a fetch is under
// way wait for it and share its token; only one reaches the source.
func TestReuseTokenSourceConcurrent(t *testing.T) {
	const callers = 16
	clk := clocktest.New(start)
	src := &fakeSource{clock: clk, life: time.Hour, gate: make(chan struct{}), entered: make(chan struct{}, callers)}
	ts := qlik.ReuseTokenSource(src, 5*time.Minute, clk.Now)

	var started, done sync.WaitGroup
	got := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			started.Done()
			tok, err := ts.Token(t.Context())
			errs[i] = err
			if tok != nil {
				got[i] = tok.AccessToken
			}
		}()
	}
	started.Wait()
	<-src.entered // one fetch is under way; the rest are waiting or about to
	close(src.gate)
	done.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Errorf("%d fetches for %d concurrent callers, want 1", n, callers)
	}
	for i := range callers {
		if errs[i] != nil || got[i] != "t1" {
			t.Errorf("caller %d: %q, %v; want t1", i, got[i], errs[i])
		}
	}
}

// TestReuseTokenSourceWaiterGivesUp: a caller waiting behind a slow fetch
// leaves when its context ends, without a fetch of its own; a failed fetch
// is not handed to the waiters, the next one fetches again.
func TestReuseTokenSourceWaiterGivesUp(t *testing.T) {
	clk := clocktest.New(start)
	src := &fakeSource{clock: clk, life: time.Hour, gate: make(chan struct{}), entered: make(chan struct{}, 4)}
	src.failNext.Store(true)
	ts := qlik.ReuseTokenSource(src, 5*time.Minute, clk.Now)

	first := make(chan error, 1)
	go func() {
		_, err := ts.Token(t.Context())
		first <- err
	}()
	<-src.entered

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := ts.Token(ctx); !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "qlik: ") {
		t.Errorf("canceled waiter: %v, want a qlik: error wrapping context.Canceled", err)
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("%d fetches, want 1: the canceled waiter fetched", n)
	}

	close(src.gate)
	if err := <-first; !errors.Is(err, errFake) {
		t.Fatalf("first: %v, want errFake", err)
	}
	tok, err := ts.Token(t.Context())
	if err != nil || tok.AccessToken != "t2" || src.calls.Load() != 2 {
		t.Errorf("after a failure: %v, %v, %d fetches; want t2 from a second fetch", tok, err, src.calls.Load())
	}
}

func TestReuseTokenSourceNilSource(t *testing.T) {
	clk := clocktest.New(start)
	ts := qlik.ReuseTokenSource(nilSource{}, 0, clk.Now)
	if tok, err := ts.Token(t.Context()); err == nil || tok != nil {
		t.Errorf("Token = %v, %v; want an error for a source that gave nothing", tok, err)
	}
	for name, f := range map[string]func(){
		"nil source": func() { qlik.ReuseTokenSource(nil, 0, time.Now) },
		"nil clock":  func() { qlik.ReuseTokenSource(nilSource{}, 0, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		})
	}
}

// nilSource returns neither a token nor an error.
type nilSource struct{}

func (nilSource) Token(context.Context) (*qlik.Token, error) { return nil, nil }

func TestStaticTokenSource(t *testing.T) {
	in := &qlik.Token{AccessToken: "abc", ExpiresAt: start}
	ts := qlik.StaticTokenSource(in)
	tok, err := ts.Token(t.Context())
	if err != nil || *tok != *in {
		t.Fatalf("Token = %v, %v", tok, err)
	}
	tok.AccessToken = "changed"
	if again, _ := ts.Token(t.Context()); again.AccessToken != "abc" || in.AccessToken != "abc" {
		t.Error("a caller's change reached the source")
	}
	if _, err := qlik.StaticTokenSource(nil).Token(t.Context()); !errors.Is(err, qlik.ErrInvalidRequest) {
		t.Errorf("nil token: %v, want ErrInvalidRequest", err)
	}
}

// TestClientCredentialsSource mints admin tokens at the fake tenant: a new
// one per call bare, one per lifetime behind ReuseTokenSource on the shared
// clock, and the admin APIs work with it.
func TestClientCredentialsSource(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	admin := f.tn.AddAdminClient()
	creds := qlik.Credentials{ClientID: admin.ID, ClientSecret: admin.Secret}
	ctx := t.Context()

	bare := f.c.ClientCredentials(creds, "admin_classic")
	f.tn.ResetCounters()
	a, err := bare.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bare.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a.AccessToken == b.AccessToken || f.tn.Calls(qliktest.EndpointToken) != 2 {
		t.Errorf("bare source: same token twice or %d calls; want a new token per call", f.tn.Calls(qliktest.EndpointToken))
	}
	if a.Scope != "admin_classic" || !a.ExpiresAt.Equal(start.Add(6*time.Hour)) {
		t.Errorf("token %v; want scope admin_classic, 6h life", a)
	}
	if bot, err := f.tn.TokenUser(a.AccessToken); err != nil || bot.Subject != `qlikbot\`+admin.ID {
		t.Errorf("token acts for %+v, %v; want the admin client's bot", bot, err)
	}

	reuse := qlik.ReuseTokenSource(bare, 5*time.Minute, f.clock.Now)
	api := f.c.Admin(reuse)
	f.tn.ResetCounters()
	for range 3 {
		u, err := api.FindUserByEmail(ctx, f.user.Email)
		if err != nil || u.ID != f.user.ID {
			t.Fatalf("FindUserByEmail = %+v, %v", u, err)
		}
	}
	if n := f.tn.Calls(qliktest.EndpointToken); n != 1 {
		t.Errorf("%d token calls for 3 admin calls, want 1", n)
	}
	f.clock.Advance(6*time.Hour - 5*time.Minute)
	if _, err := api.Me(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.tn.Calls(qliktest.EndpointToken); n != 2 {
		t.Errorf("%d token calls, want 2: the token was 5 minutes from expiry", n)
	}
}

// TestAdminTokenSourceErrors: the admin calls report a failing source with
// a qlik: prefix, keep the tenant's *Error reachable, show neither secret nor
// token, and ask again on the next call.
func TestAdminTokenSourceErrors(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	admin := f.tn.AddAdminClient()
	wrong := qlik.Credentials{ClientID: admin.ID, ClientSecret: secretSentinel}
	api := f.c.Admin(qlik.ReuseTokenSource(f.c.ClientCredentials(wrong, "admin_classic"), 5*time.Minute, f.clock.Now))
	f.tn.ResetCounters()
	for range 2 {
		_, err := api.FindUserByEmail(t.Context(), f.user.Email)
		wantQlikError(t, err, "token", 400)
		if !strings.HasPrefix(err.Error(), "qlik: admin token: ") || strings.Contains(fmt.Sprintf("%+v", err), secretSentinel) {
			t.Errorf("err = %v", err)
		}
	}
	if n := f.tn.Calls(qliktest.EndpointToken); n != 2 {
		t.Errorf("%d token calls, want 2: a failure is not cached", n)
	}
	if n := f.tn.Calls(qliktest.EndpointUsers); n != 0 {
		t.Errorf("%d users calls without a token", n)
	}

	// A source error that is not the tenant's is wrapped the same way.
	clk := clocktest.New(start)
	src := &fakeSource{clock: clk, life: time.Hour}
	src.failNext.Store(true)
	_, err := f.c.Admin(src).Me(t.Context())
	if !errors.Is(err, errFake) || !strings.HasPrefix(err.Error(), "qlik: admin token: ") {
		t.Errorf("err = %v", err)
	}
	for name, ts := range map[string]qlik.TokenSource{"nil source": nil, "source giving nothing": nilSource{}} {
		if _, err := f.c.Admin(ts).Me(t.Context()); err == nil || !strings.HasPrefix(err.Error(), "qlik: ") {
			t.Errorf("%s: err = %v", name, err)
		}
	}

	// Arguments are checked before the source is asked.
	src.calls.Store(0)
	if _, err := f.c.Admin(src).FindUserByEmail(t.Context(), ""); !errors.Is(err, qlik.ErrInvalidRequest) || src.calls.Load() != 0 {
		t.Errorf("empty email: %v after %d token calls; want ErrInvalidRequest and none", err, src.calls.Load())
	}
}
