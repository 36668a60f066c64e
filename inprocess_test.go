package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// inProc is the broker running through run() in this process, on free
// loopback ports, in front of a fake tenant.
type inProc struct {
	api     string // http://host:port of the API listener
	metrics string // http://host:port of the metrics listener
	logs    *syncBuffer
	tenant  *qliktest.Tenant
	client  qliktest.OAuthClient
	hmacKey string
}

// inProcOptions are the QTB_* settings of one in-process broker; the tenant,
// client and session key are filled in unless given.
type inProcOptions struct {
	env          map[string]string
	tenant       *qliktest.Tenant // nil: a new one
	tenantURL    string           // overrides the tenant's own URL (e.g. a recording proxy)
	clientSecret string
	hmacKey      string
}

func startInProc(t *testing.T, o inProcOptions) *inProc {
	t.Helper()
	tn := o.tenant
	if tn == nil {
		var err error
		if tn, err = qliktest.New(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tn.Close)
	}
	if o.clientSecret == "" {
		o.clientSecret = "in-process-client-secret"
	}
	if o.hmacKey == "" {
		o.hmacKey = "an-hmac-key-of-at-least-32-bytes-long!"
	}
	if o.tenantURL == "" {
		o.tenantURL = tn.URL()
	}
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-inproc", Secret: o.clientSecret})
	env := map[string]string{
		"QTB_TENANT_URL":          o.tenantURL,
		"QTB_CLIENT_ID":           oc.ID,
		"QTB_CLIENT_SECRET":       o.clientSecret,
		"QTB_SESSION_HMAC_SECRET": o.hmacKey,
		"QTB_SHUTDOWN_TIMEOUT":    "5s",
	}
	for k, v := range o.env {
		env[k] = v
	}

	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]net.Addr, 1)
	ctx = context.WithValue(ctx, listenHookKey{}, listenHook(func(api, metrics net.Addr) { addrs <- [2]net.Addr{api, metrics} }))
	p := &inProc{logs: &syncBuffer{}, tenant: tn, client: oc, hmacKey: o.hmacKey}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, envFunc(env), io.Discard, p.logs)
	}()
	select {
	case a := <-addrs:
		p.api, p.metrics = "http://"+a[0].String(), "http://"+a[1].String()
	case err := <-done:
		cancel()
		t.Fatalf("run exited before listening: %v\n%s", err, p.logs.String())
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatalf("run did not start listening:\n%s", p.logs.String())
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run did not shut down cleanly: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	return p
}

// session mints an HS256 session token for the Qlik user id, valid an hour.
func (p *inProc) session(t *testing.T, userID string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": userID, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(p.hmacKey))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// do sends one request to the API; session, when set, goes in
// Authorization. It returns the response with its body read.
func (p *inProc) do(t *testing.T, method, path, session string, header map[string]string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, p.api+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if session != "" {
		req.Header.Set("Authorization", "Bearer "+session)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// scrape returns the /metrics text.
func (p *inProc) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	return string(b)
}

// hostPort strips the scheme from an http:// URL.
func hostPort(u string) string { return strings.TrimPrefix(u, "http://") }
