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
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

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

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// tracingConfig is the OpenTelemetry tracing of `serve`, read from the
// standard OTEL_* variables (the ones collectors and platforms set), not
// from QTB_* settings. Tracing is on only when an OTLP endpoint is set; the
// zero value is off. Every value the SDK would read from the process
// environment is passed explicitly, so run's getenv is the only source.
type tracingConfig struct {
	endpoint    string            // OTLP/HTTP traces URL; empty: tracing off
	headers     map[string]string // may carry an API key: never logged
	timeout     time.Duration
	compression otlptracehttp.Compression
	tls         *tls.Config // nil: system roots, no client certificate
	resource    []attribute.KeyValue
	sampler     sdktrace.Sampler
	batch       []sdktrace.BatchSpanProcessorOption

	// provider is set by start; nil while tracing is off.
	provider *sdktrace.TracerProvider
}

// defaultServiceName is service.name unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES say otherwise.
const defaultServiceName = "qlik-token-broker"

// propagator carries W3C trace context in (from callers) and out (to
// tenants). Baggage is not propagated: it would forward caller-set data to
// the tenant.
var propagator = propagation.TraceContext{}

// tracingFromEnv reads the tracing configuration, returning every problem
// at once by variable name. With no endpoint, OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none, tracing is off and nothing else is read.
func tracingFromEnv(getenv func(string) string) (tracingConfig, error) {
	var c tracingConfig
	c.endpoint = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") // used as is
	if c.endpoint == "" {
		if base := getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); base != "" {
			c.endpoint = strings.TrimSuffix(base, "/") + "/v1/traces"
		}
	}
	exporter := getenv("OTEL_TRACES_EXPORTER")
	if c.endpoint == "" || strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || exporter == "none" {
		return tracingConfig{}, nil
	}

	var errs []error
	fail := func(name, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{name}, a...)...))
	}
	if exporter != "" && exporter != "otlp" {
		fail("OTEL_TRACES_EXPORTER", "only otlp (or none) is supported")
	}
	endpointVar := "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	if getenv(endpointVar) == "" {
		endpointVar = "OTEL_EXPORTER_OTLP_ENDPOINT"
	}
	if u, err := url.Parse(c.endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fail(endpointVar, "must be an http:// or https:// URL")
	}
	if name, v := otlpEnv(getenv, "PROTOCOL"); v != "" && v != "http/protobuf" {
		fail(name, "only http/protobuf is supported (the collector's port 4318)")
	}
	if name, v := otlpEnv(getenv, "HEADERS"); v != "" {
		var err error
		if c.headers, err = parseKeyValues(v); err != nil {
			fail(name, "%v", err) // the error never quotes a value
		}
	}
	c.timeout = 10 * time.Second
	if name, v := otlpEnv(getenv, "TIMEOUT"); v != "" {
		c.timeout = envMillis(v, name, fail)
	}
	switch name, v := otlpEnv(getenv, "COMPRESSION"); v {
	case "", "none":
		c.compression = otlptracehttp.NoCompression
	case "gzip":
		c.compression = otlptracehttp.GzipCompression
	default:
		fail(name, "must be gzip or none")
	}
	if tc, err := otlpTLS(getenv); err != nil {
		errs = append(errs, err)
	} else {
		c.tls = tc
	}

	service := getenv("OTEL_SERVICE_NAME")
	c.resource = []attribute.KeyValue{semconv.ServiceName(defaultServiceName), semconv.ServiceVersion(version)}
	if v := getenv("OTEL_RESOURCE_ATTRIBUTES"); v != "" {
		attrs, err := parseKeyValues(v)
		if err != nil {
			fail("OTEL_RESOURCE_ATTRIBUTES", "%v", err)
		}
		for k, v := range attrs {
			c.resource = append(c.resource, attribute.String(k, v)) // later keys win
		}
	}
	if service != "" {
		c.resource = append(c.resource, semconv.ServiceName(service))
	}

	var err error
	if c.sampler, err = parseSampler(getenv("OTEL_TRACES_SAMPLER"), getenv("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		fail("OTEL_TRACES_SAMPLER", "%v", err)
	}

	// The batch span processor's settings, defaults as the SDK's.
	c.batch = []sdktrace.BatchSpanProcessorOption{
		sdktrace.WithBatchTimeout(envMillisOr(getenv, "OTEL_BSP_SCHEDULE_DELAY", 5*time.Second, fail)),
		sdktrace.WithExportTimeout(envMillisOr(getenv, "OTEL_BSP_EXPORT_TIMEOUT", 30*time.Second, fail)),
		sdktrace.WithMaxQueueSize(envIntOr(getenv, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, fail)),
		sdktrace.WithMaxExportBatchSize(envIntOr(getenv, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, fail)),
	}
	if len(errs) > 0 {
		return tracingConfig{}, errors.Join(errs...)
	}
	return c, nil
}

// otlpEnv returns the traces-specific OTEL_EXPORTER_OTLP_TRACES_<suffix>
// when set, else the general OTEL_EXPORTER_OTLP_<suffix>, with its name.
func otlpEnv(getenv func(string) string, suffix string) (name, value string) {
	name = "OTEL_EXPORTER_OTLP_TRACES_" + suffix
	if v := getenv(name); v != "" {
		return name, v
	}
	name = "OTEL_EXPORTER_OTLP_" + suffix
	return name, getenv(name)
}

// otlpTLS builds the exporter's TLS settings from the CA and client
// certificate variables; nil when none is set.
func otlpTLS(getenv func(string) string) (*tls.Config, error) {
	caVar, ca := otlpEnv(getenv, "CERTIFICATE")
	certVar, cert := otlpEnv(getenv, "CLIENT_CERTIFICATE")
	keyVar, key := otlpEnv(getenv, "CLIENT_KEY")
	if ca == "" && cert == "" && key == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", caVar, err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate in %s", caVar, ca)
		}
	}
	if (cert == "") != (key == "") {
		return nil, fmt.Errorf("%s and %s: set both or neither", certVar, keyVar)
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("%s, %s: %w", certVar, keyVar, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// parseKeyValues reads the OTEL list format "k1=v1,k2=v2" with
// percent-encoded values. Errors name the position, never a value.
func parseKeyValues(s string) (map[string]string, error) {
	kv := make(map[string]string)
	for i, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("entry %d is not key=value", i+1)
		}
		dv, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("entry %d (%s): bad percent-encoding", i+1, k)
		}
		kv[k] = dv
	}
	return kv, nil
}

// parseSampler reads OTEL_TRACES_SAMPLER and its argument. The default,
// parentbased_always_on, records every request a caller samples and every
// request without a caller's trace.
func parseSampler(name, arg string) (sdktrace.Sampler, error) {
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || f < 0 || f > 1 {
			return 0, errors.New("OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1")
		}
		return f, nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio", "parentbased_traceidratio":
		f, err := ratio()
		if err != nil {
			return nil, err
		}
		if name == "traceidratio" {
			return sdktrace.TraceIDRatioBased(f), nil
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(f)), nil
	}
	return nil, fmt.Errorf("unsupported sampler %q", name)
}

func envMillis(v, name string, fail func(name, format string, a ...any)) time.Duration {
	ms, err := strconv.Atoi(v)
	if err != nil || ms <= 0 {
		fail(name, "must be a positive number of milliseconds")
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

func envMillisOr(getenv func(string) string, name string, def time.Duration, fail func(name, format string, a ...any)) time.Duration {
	if v := getenv(name); v != "" {
		return envMillis(v, name, fail)
	}
	return def
}

func envIntOr(getenv func(string) string, name string, def int, fail func(name, format string, a ...any)) int {
	v := getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		fail(name, "must be a positive integer")
	}
	return n
}

// start builds the exporter and tracer provider when tracing is on. stop
// flushes the spans still queued and releases the exporter's connections,
// within timeout; it is a no-op when tracing is off.
func (c *tracingConfig) start(ctx context.Context, log *slog.Logger) (stop func(timeout time.Duration), err error) {
	if c.endpoint == "" {
		return func(time.Duration) {}, nil
	}
	// The exporter's own client, so stop can close its idle connections.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = c.tls
	exp, err := otlptracehttp.New(ctx,
		otlptracehttp.WithEndpointURL(c.endpoint),
		otlptracehttp.WithHeaders(c.headers),
		otlptracehttp.WithCompression(c.compression),
		otlptracehttp.WithHTTPClient(&http.Client{Transport: tr, Timeout: c.timeout}),
	)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	res, err := resource.New(ctx, resource.WithSchemaURL(semconv.SchemaURL), resource.WithTelemetrySDK(), resource.WithAttributes(c.resource...))
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(c.sampler),
		sdktrace.WithBatcher(redactingExporter{exp}, c.batch...),
	)
	// The SDK reports export failures only through this process-wide hook.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: exporting spans failed", "err", err)
	}))
	c.provider = tp
	log.Info("tracing on", "endpoint", redactURL(c.endpoint), "sampler", c.sampler.Description())
	return func(timeout time.Duration) {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			log.Warn("tracing: flushing spans at exit failed", "err", err)
		}
		tr.CloseIdleConnections()
	}, nil
}

// tracerName names the broker's instrumentation scope.
const tracerName = "github.com/qtb-dev/qlik-token-broker/broker"

// tracer is the broker's tracer, nil while tracing is off.
func (c tracingConfig) tracer() trace.Tracer {
	if c.provider == nil {
		return nil
	}
	return c.provider.Tracer(tracerName, trace.WithInstrumentationVersion(version))
}

// serverSpanNames names the server spans of the traced routes; other
// routes (health probes, the reverse proxy, metrics) are not traced.
var serverSpanNames = map[string]string{
	"GET /v1/token":          "token",
	"POST /v1/token":         "token",
	"DELETE /v1/token":       "logout",
	"POST /v1/service/token": "service.token",
}

// handler wraps the API in server spans that continue the caller's trace
// (W3C traceparent); h itself when tracing is off.
func (c tracingConfig) handler(h http.Handler) http.Handler {
	if c.provider == nil {
		return h
	}
	return otelhttp.NewHandler(h, "",
		otelhttp.WithTracerProvider(c.provider),
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

// upstreamHTTPClient is the HTTP client of calls to tenants. With tracing
// on, each request is a client span and carries traceparent to the tenant.
func (c config) upstreamHTTPClient() *http.Client {
	hc := qlik.NewHTTPClient(c.UpstreamTimeout)
	if c.tracing.provider == nil {
		return hc
	}
	hc.Transport = otelhttp.NewTransport(hc.Transport,
		otelhttp.WithTracerProvider(c.tracing.provider),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithPropagators(propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if clientSpanPaths[r.URL.Path] {
				return r.Method + " " + r.URL.Path
			}
			return r.Method
		}),
	)
	return hc
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
