package qliktest_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const impersonation = "urn:qlik:oauth:user-impersonation"

// start is the contract's example: a 6h token issued now expires at
// 2024-03-18T00:21:41.000Z.
var start = time.Date(2024, 3, 17, 18, 21, 41, 0, time.UTC)

// harness is a tenant on a real listener, an HTTP client for it, and its clock.
type harness struct {
	t     *testing.T
	tn    *qliktest.Tenant
	hc    *http.Client
	clock *clocktest.Clock // the tenant's clock
	// A client and user set up for most tests.
	client qliktest.OAuthClient
	user   qliktest.User
}

func newHarness(t *testing.T, opts ...qliktest.Option) *harness {
	t.Helper()
	clk := clocktest.New(start)
	tn, err := qliktest.New(append([]qliktest.Option{qliktest.WithClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	h := &harness{t: t, tn: tn, hc: &http.Client{Transport: tr}, clock: clk}
	h.client = tn.AddClient(qliktest.OAuthClient{ID: "broker", Secret: "s3cret"})
	h.user = tn.AddUser(qliktest.User{Subject: "auth0|ada", Email: "ada@example.com", Name: "Ada"})
	return h
}

// cancelOnArrival posts a token request through a front server that reports
// when the request has reached the tenant's handler, cancels it then, and
// returns the client's error. No timing guesses: the cancel happens exactly
// while the handler is waiting.
func (h *harness) cancelOnArrival() error {
	h.t.Helper()
	arrived := make(chan struct{}, 1)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		h.tn.ServeHTTP(w, r)
	}))
	defer front.Close()
	ctx, cancel := context.WithCancel(h.t.Context())
	defer cancel()
	go func() {
		select {
		case <-arrived:
			cancel()
		case <-ctx.Done():
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, front.URL+"/oauth/token", strings.NewReader(`{}`))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.hc.Do(req)
	if err == nil {
		resp.Body.Close()
		return errors.New("got an answer: " + resp.Status)
	}
	return err
}

type response struct {
	status int
	header http.Header
	body   []byte
	path   string // of the last request, after redirects
}

// do sends a request and reads the whole answer.
func (h *harness) do(ctx context.Context, method, path, contentType, body string, header http.Header) (response, error) {
	req, err := http.NewRequestWithContext(ctx, method, h.tn.URL()+path, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{resp.StatusCode, resp.Header, b, resp.Request.URL.Path}, nil
}

func (h *harness) mustDo(method, path, contentType, body string, header http.Header) response {
	h.t.Helper()
	r, err := h.do(context.Background(), method, path, contentType, body, header)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func (h *harness) postJSON(path string, v any) response {
	h.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.mustDo(http.MethodPost, path, "application/json", string(b), nil)
}

func (h *harness) postForm(path string, v url.Values) response {
	h.t.Helper()
	return h.mustDo(http.MethodPost, path, "application/x-www-form-urlencoded", v.Encode(), nil)
}

func (h *harness) usersMe(token string) response {
	h.t.Helper()
	return h.mustDo(http.MethodGet, "/api/v1/users/me", "", "", http.Header{"Authorization": {"Bearer " + token}})
}

// impersonate returns a JSON token request body for h.user.
func (h *harness) impersonate(extra map[string]any) map[string]any {
	m := map[string]any{
		"client_id":     h.client.ID,
		"client_secret": h.client.Secret,
		"grant_type":    impersonation,
		"user_lookup":   map[string]string{"field": "userId", "value": h.user.ID},
	}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

type tokenBody struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	Scope       string `json:"scope"`
	ExpiresAt   string `json:"expires_at"`
	ExpiresIn   int64  `json:"expires_in"`
}

func (h *harness) token(r response) tokenBody {
	h.t.Helper()
	if r.status != http.StatusOK {
		h.t.Fatalf("status %d, want 200: %s", r.status, r.body)
	}
	var tb tokenBody
	if err := json.Unmarshal(r.body, &tb); err != nil {
		h.t.Fatalf("token body: %v: %s", err, r.body)
	}
	return tb
}

func (h *harness) issue() string {
	h.t.Helper()
	return h.token(h.postJSON("/oauth/token", h.impersonate(nil))).AccessToken
}

type errorsBody struct {
	Errors []struct {
		Code   string          `json:"code"`
		Title  string          `json:"title"`
		Detail string          `json:"detail"`
		Status json.RawMessage `json:"status"`
	} `json:"errors"`
	TraceID string `json:"traceId"`
}

// wantError checks r is the contract's errors body with status and code
// (code "" skips the code check).
func wantError(t *testing.T, r response, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var eb errorsBody
	if err := json.Unmarshal(r.body, &eb); err != nil || len(eb.Errors) != 1 {
		t.Fatalf("not an errors body (%v): %s", err, r.body)
	}
	e := eb.Errors[0]
	if code != "" && e.Code != code {
		t.Errorf("code %q, want %q", e.Code, code)
	}
	if e.Title == "" {
		t.Error("empty title")
	}
	// A number on the users and groups APIs, a string elsewhere (dialect.go).
	wantStatus := strconv.Quote(strconv.Itoa(status))
	if r.path == "/api/v1/users" || strings.HasPrefix(r.path, "/api/v1/users/") ||
		r.path == "/api/v1/groups" || strings.HasPrefix(r.path, "/api/v1/groups/") {
		wantStatus = strconv.Itoa(status)
	}
	if string(e.Status) != wantStatus {
		t.Errorf("status field %s, want %s", e.Status, wantStatus)
	}
	if len(eb.TraceID) != 32 || strings.Trim(eb.TraceID, "0123456789abcdef") != "" {
		t.Errorf("traceId %q, want 32 hex digits", eb.TraceID)
	}
}
