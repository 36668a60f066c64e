package qliktest_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

func TestFaultQueue(t *testing.T) {
	h := newHarness(t)
	h.tn.InjectFault(qliktest.EndpointToken,
		qliktest.Fault{Status: 429, RetryAfter: "13"},
		qliktest.Fault{Status: 503},
		qliktest.Fault{Status: 200, Body: `{"access_token":`},
		qliktest.Fault{Status: 400, Body: `{"error":"invalid_grant"}`},
		qliktest.Fault{},
	)
	h.tn.InjectFault(qliktest.EndpointUsersMe, qliktest.Fault{Status: 502, RetryAfter: "Wed, 21 Oct 2015 07:28:00 GMT"})

	tests := []struct {
		status     int
		retryAfter string
		body       string // exact body, or "" to check the errors shape
		code       string
	}{
		{429, "13", "", "HTTP-429"},
		{503, "", "", "HTTP-503"},
		{200, "", `{"access_token":`, ""},
		{400, "", `{"error":"invalid_grant"}`, ""},
		{500, "", "", "HTTP-500"}, // zero Fault
	}
	for i, tt := range tests {
		if got := h.tn.PendingFaults(qliktest.EndpointToken); got != len(tests)-i {
			t.Fatalf("PendingFaults = %d before request %d", got, i)
		}
		r := h.postJSON("/oauth/token", h.impersonate(nil))
		if got := r.header.Get("Retry-After"); got != tt.retryAfter {
			t.Errorf("#%d Retry-After %q, want %q", i, got, tt.retryAfter)
		}
		if tt.body != "" {
			if r.status != tt.status || string(r.body) != tt.body {
				t.Errorf("#%d got %d %q, want %d %q", i, r.status, r.body, tt.status, tt.body)
			}
			continue
		}
		wantError(t, r, tt.status, tt.code)
		if tt.status == 429 && !strings.Contains(string(r.body), `"title":"API rate limit reached.","detail":"You need to wait 13 seconds until limit is lifted."`) {
			t.Errorf("429 body %s", r.body)
		}
	}
	// Queue drained: real behaviour again, and other endpoints kept their own queue.
	h.issue()
	r := h.usersMe("x")
	wantError(t, r, 502, "HTTP-502")
	if r.header.Get("Retry-After") == "" {
		t.Error("users_me fault lost its Retry-After")
	}
	if got, want := h.tn.Calls(qliktest.EndpointToken), len(tests)+1; got != want {
		t.Errorf("Calls(token) = %d, want %d (faulted requests count)", got, want)
	}
	if got := h.tn.IssuedTokens(); got != 1 {
		t.Errorf("IssuedTokens = %d, want 1", got)
	}
}

func TestFaultEmptySuccess(t *testing.T) {
	h := newHarness(t)
	h.tn.InjectFault(qliktest.EndpointRevoke, qliktest.Fault{Status: 204})
	r := h.postJSON("/oauth/revoke", map[string]string{})
	if r.status != 204 || len(r.body) != 0 {
		t.Errorf("got %d %q", r.status, r.body)
	}
}

func TestFaultCloseConn(t *testing.T) {
	h := newHarness(t)
	h.tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{CloseConn: true})
	_, err := h.do(t.Context(), http.MethodPost, "/oauth/token", "application/json", `{}`, nil)
	if err == nil {
		t.Fatal("want a transport error from a dropped connection")
	}
	h.issue() // the tenant still serves
}

func TestFaultHangHonoursContext(t *testing.T) {
	h := newHarness(t)
	h.tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Hang: true})
	if err := h.cancelOnArrival(); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context canceled", err)
	}
	h.issue()
	// The hung handler must have returned by the time Cleanup's Close does;
	// goleak checks.
}

// TestCloseUnblocks proves Close ends a hung fault and a long latency wait
// whose request is already in the handler, without any timeout.
func TestCloseUnblocks(t *testing.T) {
	tests := []struct {
		name  string
		opts  []qliktest.Option
		fault *qliktest.Fault
	}{
		{"hang fault", nil, &qliktest.Fault{Hang: true}},
		{"latency", []qliktest.Option{qliktest.WithLatency(time.Hour)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn, err := qliktest.New(tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer tn.Close()
			if tt.fault != nil {
				tn.InjectFault(qliktest.EndpointToken, *tt.fault)
			}
			// Mount the tenant behind a server that tells us when the request
			// is inside the handler.
			arrived := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(arrived)
				tn.ServeHTTP(w, r)
			}))
			defer srv.Close()
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()

			done := make(chan error, 1)
			go func() {
				resp, err := (&http.Client{Transport: tr}).Post(srv.URL+"/oauth/token", "application/json", strings.NewReader(`{}`))
				if err == nil {
					resp.Body.Close()
					err = errors.New("got an answer: " + resp.Status)
				}
				done <- err
			}()
			<-arrived
			tn.Close()
			if err := <-done; err == nil {
				t.Fatal("want the connection dropped")
			}
			// A closed tenant answers 503 rather than hanging.
			rec := httptest.NewRecorder()
			tn.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/oauth/token", nil))
			if rec.Code != http.StatusServiceUnavailable {
				t.Errorf("after Close: %d", rec.Code)
			}
			tn.Close() // idempotent
		})
	}
}

func TestLatencyHonoursContext(t *testing.T) {
	h := newHarness(t, qliktest.WithLatency(time.Hour))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err := h.do(ctx, http.MethodPost, "/oauth/token", "application/json", `{}`, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	// users/me is not Tier 2 and is not delayed.
	if r := h.usersMe("x"); r.status != 401 {
		t.Errorf("users/me = %d", r.status)
	}
}

func TestLatencyDelaysFaultsToo(t *testing.T) {
	h := newHarness(t, qliktest.WithLatency(time.Hour))
	h.tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 500})
	// Had the fault answered before the latency, the 500 would arrive first.
	if err := h.cancelOnArrival(); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context canceled", err)
	}
}

func TestRateLimit(t *testing.T) {
	h := newHarness(t, qliktest.WithRateLimit(3))
	revoke := func() response { return h.postJSON("/oauth/revoke", map[string]string{"token": "x"}) }

	h.issue()
	h.clock.Advance(20 * time.Second)
	h.issue()
	if r := revoke(); r.status != 200 { // revoke shares the tier
		t.Fatalf("revoke: %d", r.status)
	}
	// A faulted request is answered before the limiter and costs nothing.
	h.tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 503})
	wantError(t, h.postJSON("/oauth/token", h.impersonate(nil)), 503, "")

	steps := []struct {
		advance    time.Duration
		send       func() response
		status     int
		retryAfter string
	}{
		// Window: t=0, t=20s, t=20s; now t=20s.
		{0, func() response { return h.postJSON("/oauth/token", h.impersonate(nil)) }, 429, "40"},
		{0, revoke, 429, "40"},
		{30 * time.Second, revoke, 429, "10"},
		{9*time.Second + 500*time.Millisecond, revoke, 429, "1"}, // 0.5s rounded up
		{500 * time.Millisecond, func() response { return h.postJSON("/oauth/token", h.impersonate(nil)) }, 200, ""},
		{0, revoke, 429, "20"}, // window t=20s, t=20s, t=60s: the next slot frees at t=80s
	}
	for i, s := range steps {
		h.clock.Advance(s.advance)
		r := s.send()
		if s.status == 200 {
			if r.status != 200 {
				t.Fatalf("step %d: %d %s", i, r.status, r.body)
			}
			continue
		}
		wantError(t, r, 429, "HTTP-429")
		if got := r.header.Get("Retry-After"); got != s.retryAfter {
			t.Errorf("step %d: Retry-After %q, want %q", i, got, s.retryAfter)
		}
		if want := "You need to wait " + s.retryAfter + " seconds until limit is lifted."; !strings.Contains(string(r.body), want) {
			t.Errorf("step %d: body %s lacks %q", i, r.body, want)
		}
	}
	if r := h.usersMe("x"); r.status != 401 {
		t.Errorf("users/me is not Tier 2 but got %d", r.status)
	}
}

func TestSmallLatencyStillAnswers(t *testing.T) {
	h := newHarness(t, qliktest.WithLatency(time.Millisecond))
	h.issue()
	if r := h.postJSON("/oauth/revoke", map[string]string{"token": "x"}); r.status != 200 {
		t.Errorf("revoke: %d", r.status)
	}
}

func TestNewOnAddr(t *testing.T) {
	tn, err := qliktest.NewOnAddr("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	if !strings.HasPrefix(tn.URL(), "http://127.0.0.1:") {
		t.Errorf("URL %q", tn.URL())
	}
	if _, err := qliktest.NewOnAddr(strings.TrimPrefix(tn.URL(), "http://")); err == nil {
		t.Error("listening twice on one port succeeded")
	}

	// An unspecified host still yields a URL a client can dial.
	any, err := qliktest.NewOnAddr(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer any.Close()
	if !strings.HasPrefix(any.URL(), "http://127.0.0.1:") {
		t.Fatalf("URL %q", any.URL())
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(any.URL() + "/api/v1/users/me")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("users/me without a token: %d", resp.StatusCode)
	}
}

// TestTier2Quota: through HTTP, with time compressed 60-fold, 2 calls a
// simulated minute is 10 calls in any 5 seconds of the tenant clock; the
// 11th gets the contract's 429 with Retry-After, which blocks revoke too,
// and a client that waits it out gets through. Tokens live 6 minutes.
func TestTier2Quota(t *testing.T) {
	h := newHarness(t, qliktest.WithTier2Quota(2), qliktest.WithCompression(60))
	for range 10 {
		h.issue()
	}
	r := h.postJSON("/oauth/token", h.impersonate(nil))
	wantError(t, r, 429, "")
	if got := r.header.Get("Retry-After"); got != "5" {
		t.Fatalf("Retry-After %q, want 5 (the window is 5m/60)", got)
	}
	h.clock.Advance(4 * time.Second)
	if r := h.postJSON("/oauth/revoke", map[string]string{"token": "x"}); r.status != 429 || r.header.Get("Retry-After") != "1" {
		t.Fatalf("revoke during the block: %d, Retry-After %q; want 429, 1", r.status, r.header.Get("Retry-After"))
	}
	h.clock.Advance(time.Second)
	tb := h.token(h.postJSON("/oauth/token", h.impersonate(nil)))
	if tb.ExpiresIn != 360 {
		t.Fatalf("expires_in %d, want 360 (6h/60)", tb.ExpiresIn)
	}
	if u := h.tn.QuotaUse(); u.Admitted != 11 || u.Rejected != 2 || u.Limit != 10 {
		t.Fatalf("QuotaUse = %+v; want 11 admitted, 2 rejected, limit 10", u)
	}
}
