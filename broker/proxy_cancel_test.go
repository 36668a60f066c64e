package broker_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// TestProxyClientCancelIsNot5xx: a caller that gives up on a proxied
// request while the tenant is still answering is counted as 499, not as a
// tenant failure (5xx), and logged below ERROR.
func TestProxyClientCancelIsNot5xx(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	arrived := make(chan struct{}, 1)
	var logs bytes.Buffer
	var mu sync.Mutex
	e := newEnv(t, envOptions{
		logs: &lockedWriter{w: &logs, mu: &mu},
		proxyURL: func(string) string {
			slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			t.Cleanup(func() { once.Do(func() { close(release) }); slow.Close() })
			return slow.URL
		},
	})
	ada := e.addUser("Ada")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/v1/qlik/api/v1/items", nil)
	req.Header.Set("Authorization", "Bearer "+e.session(ada.ID))
	errc := make(chan error, 1)
	go func() {
		resp, err := e.srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("the cancelled request got an answer")
	}
	// The broker finishes the request after the client left: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(e.metrics.ProxyRequests.WithLabelValues("acme", "read", "4xx")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no 4xx proxy request counted; 5xx: %v", testutil.ToFloat64(e.metrics.ProxyRequests.WithLabelValues("acme", "read", "5xx")))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := testutil.ToFloat64(e.metrics.ProxyRequests.WithLabelValues("acme", "read", "5xx")); n != 0 {
		t.Errorf("a client cancellation counted as %v tenant failures (5xx)", n)
	}
	if n := testutil.ToFloat64(e.metrics.HTTPRequests.WithLabelValues("/v1/qlik/*", "GET", "499")); n != 1 {
		t.Errorf("http_requests_total{code=499} = %v, want 1", n)
	}
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if strings.Contains(out, `"level":"ERROR"`) || strings.Contains(out, `"level":"WARN"`) {
		t.Errorf("a client cancellation was logged as a failure:\n%s", out)
	}
}

// TestServiceCredentialRejectionSaysSo: a refused service credential is
// not described as a session token.
func TestServiceCredentialRejectionSaysSo(t *testing.T) {
	serviceKey := []byte("a-different-key-for-service-credentials!")
	e := newEnv(t, envOptions{service: &session.Config{HMACSecret: serviceKey, Audience: "qtb-service", ListClaim: "tenants"}})
	expired, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "nightly-export", "aud": "qtb-service", "tenants": []string{"acme"}, "exp": e.clock.Now().Add(-time.Hour).Unix(),
	}).SignedString(serviceKey)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/service/token", strings.NewReader(`{"tenant":"acme","user_lookup":{"field":"userId","value":"u"}}`))
	req.Header.Set("Authorization", "Bearer "+expired)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	eb := decodeErrorBody(t, body)
	if resp.StatusCode != 401 || eb.Error != "invalid_session" || eb.Message != "the service credential was rejected (expired)" {
		t.Fatalf("%d %+v", resp.StatusCode, eb)
	}
	// A user's session keeps its own wording.
	resp2, body2 := e.do("GET", "/v1/token", "not-a-jwt", nil)
	if eb := decodeErrorBody(t, body2); resp2.StatusCode != 401 || !strings.HasPrefix(eb.Message, "the session token was rejected") {
		t.Fatalf("%d %+v", resp2.StatusCode, eb)
	}
}
