package config

import (
	"errors"
	"strings"
	"testing"
)

// TestTracingConfig: the OTEL_* variables that turn tracing on and off,
// and invalid ones named without echoing their values.
func TestTracingConfig(t *testing.T) {
	const secret = "api-key-SENTINEL"
	for _, tc := range []struct {
		name     string
		env      map[string]string
		endpoint string   // "" with no errors: tracing off
		errs     []string // variables named by the error
	}{
		{"nothing set", nil, "", nil},
		{"only a service name", map[string]string{"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "bogus"}, "", nil},
		{"base endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces", nil},
		{"traces endpoint as is", map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example.com/otlp",
		}, "https://c.example.com/otlp", nil},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, "", nil},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, "", nil},
		{"everything valid", map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=" + secret + ",x-b=a%20b",
			"OTEL_EXPORTER_OTLP_TIMEOUT": "2000", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
			"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
			"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod", "OTEL_BSP_SCHEDULE_DELAY": "50",
		}, "http://c:4318/v1/traces", nil},
		{"invalid values", map[string]string{
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_HEADERS": secret, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "10s",
			"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd", "OTEL_TRACES_SAMPLER": "jaeger_remote", "OTEL_TRACES_EXPORTER": "zipkin",
			"OTEL_BSP_SCHEDULE_DELAY": "soon", "OTEL_BSP_MAX_QUEUE_SIZE": "-1", "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/k.pem",
		}, "", []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
			"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_EXPORTER",
			"OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_EXPORTER_OTLP_CLIENT_KEY"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, errs := tracingFromEnv(envFunc(tc.env), readFile)
			err := errors.Join(errs...)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if c.Endpoint != tc.endpoint {
					t.Fatalf("endpoint %q, want %q", c.Endpoint, tc.endpoint)
				}
				if c.Endpoint != "" && c.Headers != nil && c.Headers["x-b"] != "a b" {
					t.Errorf("headers not percent-decoded: %q", string(c.Headers["x-b"]))
				}
				return
			}
			if err == nil {
				t.Fatal("accepted invalid values")
			}
			for _, name := range tc.errs {
				if !strings.Contains(err.Error(), name+":") && !strings.Contains(err.Error(), name+" ") {
					t.Errorf("error does not name %s:\n%v", name, err)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error echoes a header value:\n%v", err)
			}
		})
	}
}
