// Package telemetry is the broker's OpenTelemetry tracing, as the OTEL_*
// variables configure it (config.Tracing): the tracer provider and its
// OTLP/HTTP exporter, the server spans around the API, the instrumented
// HTTP client of calls to tenants, and the flush at shutdown. Exported
// spans never carry query values.
//
// Everything that traces takes it from a *Telemetry: there is no global
// provider to start before building clients.
package telemetry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
)

// defaultServiceName is service.name unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES say otherwise.
const defaultServiceName = "qlik-token-broker"

// propagator carries W3C trace context in (from callers) and out (to
// tenants). Baggage is not propagated: it would forward caller-set data to
// the tenant.
var propagator = propagation.TraceContext{}

// Telemetry is the tracing of one run. When tracing is off (and on a nil
// *Telemetry) its methods hand back what they are given, and Tracer is nil.
type Telemetry struct {
	provider *sdktrace.TracerProvider
	// exporter is the exporter's transport, whose idle connections
	// Shutdown closes.
	exporter *http.Transport
	version  string
}

// New starts tracing as cfg says: the OTLP exporter and the tracer
// provider, whose export failures are logged on log. Without an endpoint
// it returns a Telemetry that does nothing. version is the broker's, for
// service.version and the tracer's instrumentation version.
func New(ctx context.Context, cfg config.Tracing, version string, log *slog.Logger) (*Telemetry, error) {
	if cfg.Endpoint == "" {
		return &Telemetry{}, nil
	}
	sampler, err := sampler(cfg.Sampler, cfg.SamplerRatio)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	tlsConfig, err := tlsConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	// The exporter's own client, so Shutdown can close its idle connections.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	headers := make(map[string]string, len(cfg.Headers))
	for k, v := range cfg.Headers {
		headers[k] = string(v)
	}
	compression := otlptracehttp.NoCompression
	if cfg.Gzip {
		compression = otlptracehttp.GzipCompression
	}
	exp, err := otlptracehttp.New(ctx,
		otlptracehttp.WithEndpointURL(cfg.Endpoint),
		otlptracehttp.WithHeaders(headers),
		otlptracehttp.WithCompression(compression),
		otlptracehttp.WithHTTPClient(&http.Client{Transport: tr, Timeout: cfg.Timeout}),
	)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	res, err := resource.New(ctx, resource.WithSchemaURL(semconv.SchemaURL), resource.WithTelemetrySDK(),
		resource.WithAttributes(resourceAttributes(cfg, version)...))
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
		sdktrace.WithBatcher(redactingExporter{exp},
			sdktrace.WithBatchTimeout(cfg.BatchTimeout),
			sdktrace.WithExportTimeout(cfg.ExportTimeout),
			sdktrace.WithMaxQueueSize(cfg.MaxQueueSize),
			sdktrace.WithMaxExportBatchSize(cfg.MaxExportBatchSize),
		),
	)
	// The SDK reports export failures only through this process-wide hook.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: exporting spans failed", "err", err)
	}))
	log.Info("tracing on", "endpoint", redactURL(cfg.Endpoint), "sampler", sampler.Description())
	return &Telemetry{provider: tp, exporter: tr, version: version}, nil
}

// resourceAttributes describe the service: the defaults, then
// OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME (later keys win).
func resourceAttributes(cfg config.Tracing, version string) []attribute.KeyValue {
	attrs := []attribute.KeyValue{semconv.ServiceName(defaultServiceName), semconv.ServiceVersion(version)}
	for k, v := range cfg.ResourceAttributes {
		attrs = append(attrs, attribute.String(k, v))
	}
	if cfg.ServiceName != "" {
		attrs = append(attrs, semconv.ServiceName(cfg.ServiceName))
	}
	return attrs
}

// sampler maps an OTEL_TRACES_SAMPLER name to its sampler. The default,
// parentbased_always_on, records every request a caller samples and every
// request without a caller's trace.
func sampler(name string, ratio float64) (sdktrace.Sampler, error) {
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(ratio), nil
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), nil
	}
	return nil, fmt.Errorf("unsupported sampler %q", name)
}

// tlsConfig is the exporter's TLS: the configured roots and client
// certificate; nil (system roots, no certificate) when none is set.
func tlsConfig(cfg config.Tracing) (*tls.Config, error) {
	if cfg.CA == nil && cfg.ClientCert == nil {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CA != nil {
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(cfg.CA) {
			return nil, errors.New("no PEM certificate in the CA")
		}
	}
	if cfg.ClientCert != nil {
		pair, err := tls.X509KeyPair(cfg.ClientCert, []byte(cfg.ClientKey))
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// Shutdown flushes the spans still queued and releases the exporter's
// connections, within ctx. It does nothing when tracing is off.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil || t.provider == nil {
		return nil
	}
	err := t.provider.Shutdown(ctx)
	t.exporter.CloseIdleConnections()
	return err
}

// tracerName names the broker's instrumentation scope.
const tracerName = "github.com/qtb-dev/qlik-token-broker/broker"

// Tracer is the broker's tracer, nil while tracing is off.
func (t *Telemetry) Tracer() trace.Tracer {
	if t == nil || t.provider == nil {
		return nil
	}
	return t.provider.Tracer(tracerName, trace.WithInstrumentationVersion(t.version))
}

// serverSpanNames names the server spans of the traced routes; other
// routes (health probes, the reverse proxy, metrics) are not traced.
var serverSpanNames = map[string]string{
	"GET /v1/token":          "token",
	"POST /v1/token":         "token",
	"DELETE /v1/token":       "logout",
	"POST /v1/service/token": "service.token",
}

// Handler wraps the API in server spans that continue the caller's trace
// (W3C traceparent); h itself when tracing is off.
func (t *Telemetry) Handler(h http.Handler) http.Handler {
	if t == nil || t.provider == nil {
		return h
	}
	return otelhttp.NewHandler(h, "",
		otelhttp.WithTracerProvider(t.provider),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithPropagators(propagator),
		otelhttp.WithFilter(func(r *http.Request) bool { return serverSpanNames[r.Method+" "+r.URL.Path] != "" }),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return serverSpanNames[r.Method+" "+r.URL.Path] }),
	)
}

// clientSpanPaths are the tenant paths the broker calls while serving;
// other paths name a client span by its method alone, so an id in a path
// never becomes a span name.
var clientSpanPaths = map[string]bool{"/oauth/token": true, "/oauth/revoke": true, "/api/v1/users": true}

// HTTPClient returns base for calls to tenants, instrumented: with tracing
// on, a copy whose requests are client spans carrying traceparent to the
// tenant; base itself when tracing is off.
func (t *Telemetry) HTTPClient(base *http.Client) *http.Client {
	if t == nil || t.provider == nil {
		return base
	}
	hc := *base
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	hc.Transport = otelhttp.NewTransport(next,
		otelhttp.WithTracerProvider(t.provider),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithPropagators(propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if clientSpanPaths[r.URL.Path] {
				return r.Method + " " + r.URL.Path
			}
			return r.Method
		}),
	)
	return &hc
}

// redactingExporter keeps query values out of exported spans. otelhttp
// records a client request's url.full, and a users lookup's filter holds
// the user's email.
type redactingExporter struct{ sdktrace.SpanExporter }

// ExportSpans exports spans with their url.full and url.query redacted.
func (e redactingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	out := make([]sdktrace.ReadOnlySpan, len(spans))
	for i, s := range spans {
		out[i] = redactedSpan{s}
	}
	return e.SpanExporter.ExportSpans(ctx, out)
}

// redactedSpan is a finished span whose query values read as REDACTED.
type redactedSpan struct{ sdktrace.ReadOnlySpan }

func (s redactedSpan) Attributes() []attribute.KeyValue {
	attrs := slices.Clone(s.ReadOnlySpan.Attributes())
	for i, kv := range attrs {
		switch kv.Key {
		case semconv.URLFullKey:
			attrs[i] = semconv.URLFull(redactURL(kv.Value.AsString()))
		case semconv.URLQueryKey:
			attrs[i] = semconv.URLQuery(redactQuery(kv.Value.AsString()))
		}
	}
	return attrs
}

// redactURL returns raw without user info or fragment and with every query
// value replaced by REDACTED.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		base, _, _ := strings.Cut(raw, "?")
		return base
	}
	u.User, u.Fragment, u.RawFragment, u.ForceQuery = nil, "", "", false
	if u.RawQuery != "" {
		u.RawQuery = redactQuery(u.RawQuery)
	}
	return u.String()
}

// redactQuery keeps a query's keys, replacing their values.
func redactQuery(q string) string {
	var b strings.Builder
	for i, part := range strings.Split(q, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		k, _, _ := strings.Cut(part, "=")
		b.WriteString(k + "=REDACTED")
	}
	return b.String()
}
