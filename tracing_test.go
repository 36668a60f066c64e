package main

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// otlpReceiver is an OTLP/HTTP collector: it accepts POST /v1/traces and
// keeps what it was sent.
type otlpReceiver struct {
	mu       sync.Mutex
	posts    int
	spans    []*tracepb.Span
	resource []*commonpb.KeyValue
	srv      *httptest.Server
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
			t.Errorf("receiver: unexpected %s %s", req.Method, req.URL.Path)
			http.NotFound(w, req)
			return
		}
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		var export coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(raw, &export)
		}
		if err != nil {
			t.Errorf("receiver: undecodable export: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.posts++
		for _, rs := range export.ResourceSpans {
			r.resource = append(r.resource, rs.GetResource().GetAttributes()...)
			for _, ss := range rs.ScopeSpans {
				r.spans = append(r.spans, ss.Spans...)
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *otlpReceiver) got() (posts int, spans []*tracepb.Span, resource []*commonpb.KeyValue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.posts, append([]*tracepb.Span(nil), r.spans...), append([]*commonpb.KeyValue(nil), r.resource...)
}

// headerRecorder is a reverse proxy in front of the fake tenant recording
// the path and headers of every request that reached it.
type headerRecorder struct {
	mu   sync.Mutex
	seen []recordedRequest
	srv  *httptest.Server
}

type recordedRequest struct {
	path   string
	header http.Header
}

func newHeaderRecorder(t *testing.T, tenantURL string) *headerRecorder {
	target, err := url.Parse(tenantURL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	h := &headerRecorder{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h.mu.Lock()
		h.seen = append(h.seen, recordedRequest{path: req.URL.Path, header: req.Header.Clone()})
		h.mu.Unlock()
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *headerRecorder) requests(path string) []recordedRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []recordedRequest
	for _, r := range h.seen {
		if r.path == path {
			out = append(out, r)
		}
	}
	return out
}

// tracedBroker is `serve` run in process against a fake tenant behind a
// header recorder, with Redis and email lookups (so the users API and both
// cache tiers are on the path), stopped by stop.
type tracedBroker struct {
	api      string
	tenant   *qliktest.Tenant
	recorder *headerRecorder
	user     qliktest.User
	session  string
	stop     func() error
	logs     *syncBuffer
}

func startTracedBroker(t *testing.T, otelEnv map[string]string) *tracedBroker {
	t.Helper()
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	oc := tn.AddClient(qliktest.OAuthClient{})
	admin := tn.AddAdminClient()
	user := tn.AddUser(qliktest.User{Name: "Ada", Email: "ada.lovelace@example.com"})
	rec := newHeaderRecorder(t, tn.URL())
	env := map[string]string{
		"QTB_TENANT_URL":          rec.srv.URL,
		"QTB_CLIENT_ID":           oc.ID,
		"QTB_CLIENT_SECRET":       oc.Secret,
		"QTB_ADMIN_CLIENT_ID":     admin.ID,
		"QTB_ADMIN_CLIENT_SECRET": admin.Secret,
		"QTB_USER_LOOKUP":         "email",
		"QTB_SESSION_HMAC_SECRET": testHMAC,
		"QTB_REDIS_URL":           redistest.Start(t).URL(),
		"QTB_SHUTDOWN_TIMEOUT":    "5s",
	}
	for k, v := range otelEnv {
		env[k] = v
	}

	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	ctx = context.WithValue(ctx, listenHookKey{}, listenHook(func(api, _ net.Addr) { addr <- api }))
	tb := &tracedBroker{tenant: tn, recorder: rec, user: user, logs: &syncBuffer{},
		session: sessionFor(t, jwt.MapClaims{"sub": user.Email})}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, envFunc(env), io.Discard, tb.logs)
	}()
	var once sync.Once
	var stopErr error
	tb.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(20 * time.Second):
				stopErr = fmt.Errorf("run did not return after cancel")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := tb.stop(); err != nil {
			t.Errorf("run: %v", err)
		}
		if t.Failed() {
			t.Logf("broker log:\n%s", tb.logs.String())
		}
	})
	select {
	case a := <-addr:
		tb.api = "http://" + a.String()
	case err := <-done:
		t.Fatalf("run exited before listening: %v\n%s", err, tb.logs.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("run did not start listening:\n%s", tb.logs.String())
	}
	return tb
}

// token asks for the session's token with the given traceparent (none when
// empty) and returns the access token.
func (tb *tracedBroker) token(t *testing.T, traceparent string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", tb.api+"/v1/token", nil)
	req.Header.Set("Authorization", "Bearer "+tb.session)
	req.Header.Set("Accept", "text/plain")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v1/token: %d %s", resp.StatusCode, body)
	}
	return string(body)
}

func attrValue(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.Values {
			parts = append(parts, attrValue(e))
		}
		return strings.Join(parts, ",")
	default:
		return fmt.Sprint(v.GetValue())
	}
}

func attr(s *tracepb.Span, key string) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return attrValue(kv.Value)
		}
	}
	return ""
}

// TestTracingExportsTheTokenTrace: with an OTLP endpoint set through run's
// environment, a cold /v1/token carrying a caller's traceparent becomes
// one trace under the caller's span: the request span (tenant and cache
// tier), both cache lookups, the fill, the upstream call and its HTTP
// client spans, whose traceparent reached the tenant. The spans are
// flushed when the run stops, and none holds the user's id or email, the
// session or the token.
func TestTracingExportsTheTokenTrace(t *testing.T) {
	rcv := newOTLPReceiver(t)
	b := startTracedBroker(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.srv.URL,
		// Longer than the test: spans can only arrive by the flush at exit.
		"OTEL_BSP_SCHEDULE_DELAY": "600000",
	})

	const traceID, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	access := b.token(t, "00-"+traceID+"-"+callerSpan+"-01")
	again := b.token(t, "00-"+strings.Repeat("ab", 16)+"-"+callerSpan+"-01") // warm: from L1
	if again != access {
		t.Fatal("the second request did not get the cached token")
	}
	if posts, _, _ := rcv.got(); posts != 0 {
		t.Fatalf("%d exports before the run stopped; the batch delay should hold them", posts)
	}
	if err := b.stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	_, spans, resource := rcv.got()

	// Nothing recorded anywhere names the user or carries a secret.
	for _, secret := range []string{b.user.ID, b.user.Email, url.QueryEscape(b.user.Email), access, b.session} {
		for _, s := range spans {
			if strings.Contains(s.Name, secret) {
				t.Errorf("span name %q holds a user id, email or token", s.Name)
			}
			for _, kv := range append(append([]*commonpb.KeyValue(nil), s.Attributes...), resource...) {
				if strings.Contains(attrValue(kv.Value), secret) {
					t.Errorf("span %s: attribute %s holds a user id, email or token: %q", s.Name, kv.Key, attrValue(kv.Value))
				}
			}
		}
	}
	for _, kv := range resource {
		if kv.Key == "service.name" && attrValue(kv.Value) != "qlik-token-broker" {
			t.Errorf("service.name %q, want qlik-token-broker", attrValue(kv.Value))
		}
	}

	byID := map[string]*tracepb.Span{}
	var cold []*tracepb.Span
	for _, s := range spans {
		byID[hex.EncodeToString(s.SpanId)] = s
		if hex.EncodeToString(s.TraceId) == traceID {
			cold = append(cold, s)
		}
	}
	parentName := func(s *tracepb.Span) string {
		if p := byID[hex.EncodeToString(s.ParentSpanId)]; p != nil {
			return p.Name
		}
		return hex.EncodeToString(s.ParentSpanId)
	}
	find := func(name string) *tracepb.Span {
		t.Helper()
		for _, s := range cold {
			if s.Name == name {
				return s
			}
		}
		var names []string
		for _, s := range cold {
			names = append(names, s.Name)
		}
		t.Fatalf("no span %q in the caller's trace; it has %v", name, names)
		return nil
	}

	root := find("token")
	if root.Kind != tracepb.Span_SPAN_KIND_SERVER || parentName(root) != callerSpan {
		t.Errorf("token span: kind %v, parent %s; want a server span under the caller's %s", root.Kind, parentName(root), callerSpan)
	}
	if attr(root, "qtb.tenant") != "default" || attr(root, "qtb.cache.tier") != "none" {
		t.Errorf("token span: tenant %q, tier %q; want default, none", attr(root, "qtb.tenant"), attr(root, "qtb.cache.tier"))
	}
	if l1 := find("cache.l1"); parentName(l1) != "token" || attr(l1, "qtb.cache.result") != "miss" {
		t.Errorf("cache.l1: parent %s, result %q", parentName(l1), attr(l1, "qtb.cache.result"))
	}
	if rd := find("cache.redis"); parentName(rd) != "token" || attr(rd, "qtb.cache.result") != "miss" {
		t.Errorf("cache.redis: parent %s, result %q", parentName(rd), attr(rd, "qtb.cache.result"))
	}
	if fill := find("cache.fill"); parentName(fill) != "token" || attr(fill, "qtb.lease") != "acquired" {
		t.Errorf("cache.fill: parent %s, lease %q", parentName(fill), attr(fill, "qtb.lease"))
	}
	up := find("upstream.token")
	if parentName(up) != "cache.fill" || attr(up, "qtb.outcome") != "success" || attr(up, "qtb.tenant") != "default" {
		t.Errorf("upstream.token: parent %s, outcome %q, tenant %q", parentName(up), attr(up, "qtb.outcome"), attr(up, "qtb.tenant"))
	}
	var mint *tracepb.Span // the impersonation call; the other POST /oauth/token gets the admin token
	for _, s := range cold {
		if s.Name == "POST /oauth/token" && parentName(s) == "upstream.token" {
			mint = s
		}
	}
	if mint == nil || mint.Kind != tracepb.Span_SPAN_KIND_CLIENT {
		t.Fatalf("no client span POST /oauth/token under upstream.token: %v", mint)
	}
	lookup := find("GET /api/v1/users")
	if full := attr(lookup, "url.full"); !strings.Contains(full, "filter=REDACTED") {
		t.Errorf("users lookup url.full %q: the filter is not redacted", full)
	}

	// Each client span's traceparent reached the tenant, in the caller's
	// trace.
	for path, span := range map[string]*tracepb.Span{"/oauth/token": mint, "/api/v1/users": lookup} {
		want := "00-" + traceID + "-" + hex.EncodeToString(span.SpanId) + "-01"
		var got []string
		for _, r := range b.recorder.requests(path) {
			got = append(got, r.header.Get("traceparent"))
		}
		if !slices.Contains(got, want) {
			t.Errorf("%s reached the tenant with traceparent %q, want one %q", path, got, want)
		}
	}

	// The warm request: one span for the request, one L1 hit, no upstream.
	var warm []string
	for _, s := range spans {
		if hex.EncodeToString(s.TraceId) == strings.Repeat("ab", 16) {
			warm = append(warm, s.Name)
			if s.Name == "token" && attr(s, "qtb.cache.tier") != "l1" {
				t.Errorf("warm token span: tier %q, want l1", attr(s, "qtb.cache.tier"))
			}
			if s.Name == "cache.l1" && attr(s, "qtb.cache.result") != "hit" {
				t.Errorf("warm cache.l1: result %q, want hit", attr(s, "qtb.cache.result"))
			}
		}
	}
	slices.Sort(warm)
	if strings.Join(warm, ",") != "cache.l1,token" {
		t.Errorf("warm request spans %v, want [cache.l1 token]", warm)
	}
}

// TestTracingOffExportsNothing: without OTEL variables in run's
// environment nothing is exported and no traceparent reaches the tenant,
// even though the process environment names a collector: the broker reads
// its environment only through getenv.
func TestTracingOffExportsNothing(t *testing.T) {
	rcv := newOTLPReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.srv.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
	b := startTracedBroker(t, nil)
	b.token(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if err := b.stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	if posts, spans, _ := rcv.got(); posts != 0 || len(spans) != 0 {
		t.Errorf("tracing off exported %d spans in %d posts", len(spans), posts)
	}
	for _, path := range []string{"/oauth/token", "/api/v1/users"} {
		reqs := b.recorder.requests(path)
		if len(reqs) == 0 {
			t.Fatalf("no %s call reached the tenant", path)
		}
		for _, r := range reqs {
			if tp := r.header.Get("traceparent"); tp != "" {
				t.Errorf("%s carried traceparent %q with tracing off", path, tp)
			}
		}
	}
	if strings.Contains(b.logs.String(), "tracing on") {
		t.Error("the broker logged that tracing is on")
	}
}
