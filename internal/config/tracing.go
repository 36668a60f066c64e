package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Tracing is the OpenTelemetry tracing of `serve`, read from the standard
// OTEL_* variables (the ones collectors and platforms set), not from QTB_*
// settings. Tracing is on only when Endpoint is set; the zero value is
// off. Only getenv is read, never the process environment, so run's
// environment is the only source (the SDK would read its own).
type Tracing struct {
	Endpoint string            // OTLP/HTTP traces URL; empty: tracing off
	Headers  map[string]Secret // sent with every export; may carry an API key
	Timeout  time.Duration     // of one export
	Gzip     bool              // compress exports

	CA         []byte // PEM roots to trust instead of the system's; nil: system roots
	ClientCert []byte // PEM client certificate, with ClientKey; nil: none
	ClientKey  Secret // PEM key of ClientCert

	ServiceName        string            // OTEL_SERVICE_NAME; empty: qlik-token-broker
	ResourceAttributes map[string]string // OTEL_RESOURCE_ATTRIBUTES

	// Sampler is an OTEL_TRACES_SAMPLER name ("" is parentbased_always_on),
	// SamplerRatio the argument of the traceidratio samplers.
	Sampler      string
	SamplerRatio float64

	// The batch span processor's settings (OTEL_BSP_*).
	BatchTimeout       time.Duration
	ExportTimeout      time.Duration
	MaxQueueSize       int
	MaxExportBatchSize int
}

// tracingFromEnv reads the tracing configuration and the certificate files
// it names, returning every problem by variable name. With no endpoint,
// OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none, tracing is off and
// nothing else is read.
func tracingFromEnv(getenv func(string) string, readFile func(string) ([]byte, error)) (Tracing, []error) {
	var c Tracing
	c.Endpoint = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") // used as is
	if c.Endpoint == "" {
		if base := getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); base != "" {
			c.Endpoint = strings.TrimSuffix(base, "/") + "/v1/traces"
		}
	}
	exporter := getenv("OTEL_TRACES_EXPORTER")
	if c.Endpoint == "" || strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || exporter == "none" {
		return Tracing{}, nil
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
	if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fail(endpointVar, "must be an http:// or https:// URL")
	}
	if name, v := otlpEnv(getenv, "PROTOCOL"); v != "" && v != "http/protobuf" {
		fail(name, "only http/protobuf is supported (the collector's port 4318)")
	}
	if name, v := otlpEnv(getenv, "HEADERS"); v != "" {
		headers, err := parseKeyValues(v)
		if err != nil {
			fail(name, "%v", err) // the error never quotes a value
		}
		c.Headers = make(map[string]Secret, len(headers))
		for k, v := range headers {
			c.Headers[k] = Secret(v)
		}
	}
	c.Timeout = 10 * time.Second
	if name, v := otlpEnv(getenv, "TIMEOUT"); v != "" {
		c.Timeout = envMillis(v, name, fail)
	}
	switch name, v := otlpEnv(getenv, "COMPRESSION"); v {
	case "", "none":
	case "gzip":
		c.Gzip = true
	default:
		fail(name, "must be gzip or none")
	}
	errs = append(errs, c.readTLS(getenv, readFile)...)

	c.ServiceName = getenv("OTEL_SERVICE_NAME")
	if v := getenv("OTEL_RESOURCE_ATTRIBUTES"); v != "" {
		attrs, err := parseKeyValues(v)
		if err != nil {
			fail("OTEL_RESOURCE_ATTRIBUTES", "%v", err)
		}
		c.ResourceAttributes = attrs
	}

	var err error
	if c.Sampler, c.SamplerRatio, err = parseSampler(getenv("OTEL_TRACES_SAMPLER"), getenv("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		fail("OTEL_TRACES_SAMPLER", "%v", err)
	}

	// The batch span processor's settings, defaults as the SDK's.
	c.BatchTimeout = envMillisOr(getenv, "OTEL_BSP_SCHEDULE_DELAY", 5*time.Second, fail)
	c.ExportTimeout = envMillisOr(getenv, "OTEL_BSP_EXPORT_TIMEOUT", 30*time.Second, fail)
	c.MaxQueueSize = envIntOr(getenv, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, fail)
	c.MaxExportBatchSize = envIntOr(getenv, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, fail)
	if len(errs) > 0 {
		return Tracing{}, errs
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

// readTLS reads the exporter's CA and client certificate files, checking
// that they hold what they should.
func (c *Tracing) readTLS(getenv func(string) string, readFile func(string) ([]byte, error)) []error {
	caVar, ca := otlpEnv(getenv, "CERTIFICATE")
	certVar, cert := otlpEnv(getenv, "CLIENT_CERTIFICATE")
	keyVar, key := otlpEnv(getenv, "CLIENT_KEY")
	var errs []error
	if ca != "" {
		pem, err := readFile(ca)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", caVar, err))
		case !x509.NewCertPool().AppendCertsFromPEM(pem):
			errs = append(errs, fmt.Errorf("%s: no PEM certificate in %s", caVar, ca))
		default:
			c.CA = pem
		}
	}
	if (cert == "") != (key == "") {
		return append(errs, fmt.Errorf("%s and %s: set both or neither", certVar, keyVar))
	}
	if cert == "" {
		return errs
	}
	certPEM, err := readFile(cert)
	var keyPEM []byte
	if err == nil {
		keyPEM, err = readFile(key)
	}
	if err == nil {
		_, err = tls.X509KeyPair(certPEM, keyPEM)
	}
	if err != nil {
		return append(errs, fmt.Errorf("%s, %s: %w", certVar, keyVar, err))
	}
	c.ClientCert, c.ClientKey = certPEM, Secret(keyPEM)
	return errs
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

// parseSampler checks OTEL_TRACES_SAMPLER and reads its argument, a ratio
// for the traceidratio samplers (1 when unset).
func parseSampler(name, arg string) (string, float64, error) {
	switch name {
	case "", "parentbased_always_on", "parentbased_always_off", "always_on", "always_off":
		return name, 1, nil
	case "traceidratio", "parentbased_traceidratio":
		if arg == "" {
			return name, 1, nil
		}
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || f < 0 || f > 1 {
			return "", 0, errors.New("OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1")
		}
		return name, f, nil
	}
	return "", 0, fmt.Errorf("unsupported sampler %q", name)
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
