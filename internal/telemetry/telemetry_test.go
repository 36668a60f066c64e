package telemetry

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestTracingRedactsQueries: query values never reach a span's url.full.
func TestTracingRedactsQueries(t *testing.T) {
	for in, want := range map[string]string{
		"https://t.example.com/api/v1/users?filter=email+eq+%22a%40b.c%22&limit=100": "https://t.example.com/api/v1/users?filter=REDACTED&limit=REDACTED",
		"https://u:p@t.example.com/oauth/token#frag":                                 "https://t.example.com/oauth/token",
		"http://t/x?": "http://t/x",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOffHandsBackWhatItIsGiven: with no endpoint, and on a nil
// *Telemetry, nothing is wrapped and there is no tracer.
func TestOffHandsBackWhatItIsGiven(t *testing.T) {
	off, err := New(t.Context(), config.Tracing{}, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for name, tel := range map[string]*Telemetry{"off": off, "nil": nil} {
		hc := &http.Client{}
		mux := http.NewServeMux()
		if tel.HTTPClient(hc) != hc || tel.Handler(mux) != http.Handler(mux) || tel.Tracer() != nil || tel.Shutdown(t.Context()) != nil {
			t.Errorf("%s: HTTPClient, Handler, Tracer or Shutdown is not a no-op", name)
		}
	}
}

// TestOnTracesClientCallsAndFlushes: with an endpoint, the HTTP client from
// HTTPClient sends traceparent and records a client span named after the
// known path, whose url.full keeps no query value; Shutdown flushes it to
// the collector with the service's resource.
func TestOnTracesClientCallsAndFlushes(t *testing.T) {
	var (
		mu    sync.Mutex
		spans []*tracepb.Span
		attrs []string
	)
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var export coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(raw, &export); err != nil {
			t.Errorf("collector: %v", err)
		}
		mu.Lock()
		for _, rs := range export.ResourceSpans {
			for _, kv := range rs.GetResource().GetAttributes() {
				attrs = append(attrs, kv.Key+"="+kv.GetValue().GetStringValue())
			}
			for _, ss := range rs.ScopeSpans {
				spans = append(spans, ss.Spans...)
			}
		}
		mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	defer collector.Close()
	var traceparent string
	tenant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		traceparent = r.Header.Get("traceparent")
	}))
	defer tenant.Close()

	tel, err := New(t.Context(), config.Tracing{
		Endpoint: collector.URL + "/v1/traces", Timeout: 5 * time.Second, ServiceName: "qtb-test",
		BatchTimeout: time.Hour, ExportTimeout: 5 * time.Second, MaxQueueSize: 16, MaxExportBatchSize: 16,
	}, "v-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	base := &http.Client{Timeout: 5 * time.Second}
	hc := tel.HTTPClient(base)
	if hc == base || base.Transport != nil {
		t.Fatal("HTTPClient changed its argument instead of returning an instrumented copy")
	}
	resp, err := hc.Get(tenant.URL + "/api/v1/users?filter=email%20eq%20%22ada%40example.com%22")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	if traceparent == "" {
		t.Error("no traceparent reached the tenant")
	}
	if tel.Tracer() == nil {
		t.Error("no tracer with tracing on")
	}
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(spans) != 1 || spans[0].Name != "GET /api/v1/users" {
		t.Fatalf("exported spans %v, want one GET /api/v1/users", spans)
	}
	for _, kv := range spans[0].Attributes {
		if v := kv.GetValue().GetStringValue(); strings.Contains(v, "ada") {
			t.Errorf("span attribute %s = %q holds the query's value", kv.Key, v)
		}
	}
	if got := strings.Join(attrs, " "); !strings.Contains(got, "service.name=qtb-test") || !strings.Contains(got, "service.version=v-test") {
		t.Errorf("resource %s, want service.name=qtb-test and service.version=v-test", got)
	}
}
