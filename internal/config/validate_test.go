package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// base is the least configuration that validates.
var base = map[string]string{
	"QTB_TENANT_URL": "https://acme.eu.qlikcloud.com", "QTB_CLIENT_ID": "c", "QTB_CLIENT_SECRET": "client-secret",
	"QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32),
}

// selfSigned returns a CA certificate and its key, PEM encoded.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// TestLoadReadsFilesOnceValidateReadsNone: every file a configuration
// names is read by Load; once they are gone, Validate still passes and
// the tenants still build, with their secrets.
func TestLoadReadsFilesOnceValidateReadsNone(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPEM, keyPEM := selfSigned(t)
	cert, key := write("cert.pem", string(certPEM)), write("key.pem", string(keyPEM))
	tenants := write("tenants.yaml", "tenants:\n  - id: acme\n    url: https://acme.eu.qlikcloud.com\n    clientId: a\n    clientSecretFile: "+
		write("acme-secret", "acme-secret-value\n")+"\n    adminClientId: aa\n    adminClientSecretFile: "+write("acme-admin", "admin-value")+"\n")
	env := map[string]string{
		"QTB_TENANTS_FILE": tenants, "QTB_TENANT_CLAIM": "tenant",
		"QTB_SESSION_PUBLIC_KEY_FILE":  cert,
		"QTB_SERVICE_HMAC_SECRET_FILE": write("service-hmac", strings.Repeat("s", 32)), "QTB_SERVICE_AUDIENCE": "jobs",
		"QTB_REDIS_URL": "rediss://redis:6380/0", "QTB_REDIS_CA_FILE": cert,
		"QTB_REDIS_PASSWORD_FILE":     write("redis-password", "pw"),
		"QTB_CACHE_KEY_FILE":          write("cache-key", "k1:"+strings.Repeat("A", 43)+"=\n"),
		"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318", "OTEL_EXPORTER_OTLP_CERTIFICATE": cert,
		"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": cert, "OTEL_EXPORTER_OTLP_CLIENT_KEY": key,
	}
	cfg, err := Load(nil, envFunc(with(env, "QTB_SESSION_HMAC_SECRET", "")))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate needs the files Load read: %v", err)
	}
	if string(cfg.SessionPublicKeyPEM) != string(certPEM) || string(cfg.RedisCA) != string(certPEM) || cfg.RedisPassword != "pw" ||
		cfg.Tracing.CA == nil || cfg.Tracing.ClientCert == nil || cfg.Tracing.ClientKey == "" {
		t.Fatal("Load did not keep a file's content")
	}
	bt, err := cfg.BrokerTenants(http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	if len(bt) != 1 || bt[0].ID != "acme" || bt[0].Credentials.ClientSecret != "acme-secret-value" || bt[0].Directory == nil {
		t.Fatalf("tenants %+v", bt)
	}
	if _, err := bt[0].ReloadSecret(); err == nil {
		t.Error("ReloadSecret read a file that is gone: it does not re-read")
	}
}

// TestEveryProblemInOneList: values that do not parse, files that cannot be
// read, settings that do not fit together and OTEL_* variables come in one
// error, each line naming its variable.
func TestEveryProblemInOneList(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := Load([]string{"--upstream-retries", "11"}, envFunc(with(base,
		"QTB_CLIENT_SECRET", "", "QTB_CLIENT_SECRET_FILE", missing,
		"QTB_SESSION_LEEWAY", "soon",
		"QTB_SESSION_PUBLIC_KEY_FILE", missing,
		"QTB_METRICS_LISTEN", ":8080",
		"QTB_UPSTREAM_SHARED_RATE", "90",
		"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc",
		"OTEL_EXPORTER_OTLP_CERTIFICATE", missing,
	)))
	if err == nil {
		t.Fatal("accepted")
	}
	lines := strings.Split(err.Error(), "\n")
	for _, want := range []string{"QTB_CLIENT_SECRET_FILE: read secret file", "QTB_SESSION_LEEWAY: not a duration",
		"QTB_SESSION_PUBLIC_KEY_FILE: open", "QTB_METRICS_LISTEN: must differ", "QTB_UPSTREAM_RETRIES: must be between 0 and 10",
		"QTB_UPSTREAM_SHARED_RATE: is counted in Redis", "QTB_SESSION_HMAC_SECRET: exactly one",
		"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf", "OTEL_EXPORTER_OTLP_CERTIFICATE: open"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the list lacks %q:\n%v", want, err)
		}
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "QTB_") && !strings.HasPrefix(l, "OTEL_") {
			t.Errorf("a problem names no variable: %q", l)
		}
	}
}

// TestRatesArePerMinute: the rate variables are per minute, and so are
// Config and the broker's configuration: one unit at the boundary.
func TestRatesArePerMinute(t *testing.T) {
	cfg, err := Load(nil, envFunc(with(base, "QTB_UPSTREAM_RATE", "90", "QTB_USER_RATE", "30",
		"QTB_UPSTREAM_SHARED_RATE", "60", "QTB_REDIS_URL", "redis://redis:6379/0")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.UpstreamRatePerMinute != 90 || cfg.UserRatePerMinute != 30 || cfg.UpstreamSharedRatePerMinute != 60 {
		t.Fatalf("Config rates %v, %v, %v; want 90, 30, 60 a minute", cfg.UpstreamRatePerMinute, cfg.UserRatePerMinute, cfg.UpstreamSharedRatePerMinute)
	}
	up, api := cfg.UpstreamConfig(), cfg.APIConfig()
	if up.RatePerMinute != 90 || up.SharedRatePerMinute != 60 || api.UserRatePerMinute != 30 {
		t.Errorf("broker rates %v, %v, user %v a minute; want 90, 60, 30", up.RatePerMinute, up.SharedRatePerMinute, api.UserRatePerMinute)
	}
}

// TestZeroMeansZero: QTB_UPSTREAM_RETRIES=0 is no retry, not the default;
// QTB_UPSTREAM_BURST=0 is documented as "as many as the concurrency".
func TestZeroMeansZero(t *testing.T) {
	cfg, err := Load(nil, envFunc(with(base, "QTB_UPSTREAM_RETRIES", "0", "QTB_UPSTREAM_CONCURRENCY", "12")))
	if err != nil {
		t.Fatal(err)
	}
	up := cfg.UpstreamConfig()
	if up.Retries != 0 {
		t.Errorf("Retries = %d for QTB_UPSTREAM_RETRIES=0, want none", up.Retries)
	}
	if up.Burst != 12 {
		t.Errorf("Burst = %d with QTB_UPSTREAM_BURST unset, want the concurrency, 12", up.Burst)
	}
	if cfg, _ := Load(nil, envFunc(base)); cfg.UpstreamConfig().Retries != 2 {
		t.Errorf("default Retries = %d, want 2", cfg.UpstreamConfig().Retries)
	}
}

// TestSettings: the exported table is the one Load reads, with the flag
// listing's defaults, secrets marked, every variable documented.
func TestSettings(t *testing.T) {
	settings := Settings()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range settings {
		if seen[s.Env] {
			t.Errorf("%s listed twice", s.Env)
		}
		seen[s.Env] = true
		if want := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.Env, "QTB_")), "_", "-"); s.Flag != want {
			t.Errorf("%s: flag %q, want %q", s.Env, s.Flag, want)
		}
		if s.Usage == "" {
			t.Errorf("%s has no usage", s.Env)
		}
		if s.Secret && strings.HasSuffix(s.Env, "_FILE") {
			t.Errorf("%s: a file path is not a secret", s.Env)
		}
		if !strings.Contains(string(readme), s.Env) && !strings.Contains(string(readme), strings.TrimSuffix(s.Env, "_FILE")+"(_FILE)") {
			t.Errorf("%s is not in the README", s.Env)
		}
		// Each flag exists and takes its default back.
		if s.Default != "" {
			if _, err := Load([]string{"--" + s.Flag + "=" + s.Default}, envFunc(base)); err != nil {
				t.Errorf("--%s=%s: %v", s.Flag, s.Default, err)
			}
		}
	}
	for env, def := range map[string]string{"QTB_LISTEN": ":8080", "QTB_UPSTREAM_CONCURRENCY": "8", "QTB_UPSTREAM_RATE": "0",
		"QTB_L1_ENABLED": "true", "QTB_PROXY_MAX_BODY": "33554432", "QTB_MIN_TOKEN_TTL": "10m0s", "QTB_CLIENT_SECRET": ""} {
		if i := indexOf(settings, env); i < 0 || settings[i].Default != def {
			t.Errorf("%s: default %q, want %q", env, settings[max(i, 0)].Default, def)
		}
	}
	for _, env := range []string{"QTB_CLIENT_SECRET", "QTB_REDIS_URL", "QTB_CACHE_KEY", "QTB_REDIS_SENTINEL_PASSWORD"} {
		if i := indexOf(settings, env); i < 0 || !settings[i].Secret {
			t.Errorf("%s is not marked secret", env)
		}
	}
	if len(settings) != len(new(Config).settings()) || settings[0].Env != "QTB_LISTEN" || settings[len(settings)-1].Env != "QTB_LOG_FORMAT" {
		t.Error("Settings is not the table Load reads, in order")
	}
}

func indexOf(settings []Setting, env string) int {
	for i, s := range settings {
		if s.Env == env {
			return i
		}
	}
	return -1
}

// TestTenantsFileProblems: each problem of a tenants file is named by its
// tenant under QTB_TENANTS_FILE, ids by the broker's rule included.
func TestTenantsFileProblems(t *testing.T) {
	dir := t.TempDir()
	secret := writeSecretFile(t, "s", "v")
	entry := func(id, extra string) string {
		return "  - id: " + id + "\n    url: https://" + id + ".eu.qlikcloud.com\n    clientId: c\n    clientSecretFile: " + secret + "\n" + extra
	}
	file := filepath.Join(dir, "tenants.yaml")
	content := "tenants:\n" + entry("Acme", "") + entry("ok", "") + entry("ok", "") +
		entry("mail", "    userLookup: email\n") + entry("admin", "    adminClientId: a\n") +
		entry("gone", "    adminClientId: a\n    adminClientSecretFile: "+filepath.Join(dir, "missing")+"\n") +
		"  - id: bare\n    url: http://example.com\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(nil, envFunc(map[string]string{"QTB_TENANTS_FILE": file, "QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32)}))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"QTB_TENANTS_FILE: tenant Acme: tenant id \"Acme\": use 1 to 63 lower-case letters",
		"tenant ok is listed twice", "tenant mail: email lookups need adminClientId",
		"tenant admin: adminClientSecretFile is required", "tenant gone: adminClientSecretFile: read secret file",
		"tenant bare: clientId is required", "clientSecretFile is required", "tenant URL must use https"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	// A reload checks as strictly, and gives nothing on a problem.
	var cfg Config
	if ts, err := cfg.ReloadTenants([]byte(content), http.DefaultClient); err == nil || ts != nil {
		t.Errorf("ReloadTenants: %d tenants, %v", len(ts), err)
	}
	if _, err := cfg.ReloadTenants([]byte("tenants:\n  - id: x\n    clientSecrte: typo\n"), http.DefaultClient); err == nil || !strings.Contains(err.Error(), "clientSecrte") {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := cfg.ReloadTenants([]byte("tenants: []\n"), http.DefaultClient); err == nil || !strings.Contains(err.Error(), "lists no tenants") {
		t.Errorf("no tenants: %v", err)
	}
	if ts, err := cfg.ReloadTenants([]byte("tenants:\n"+entry("ok", "")), http.DefaultClient); err != nil || len(ts) != 1 || ts[0].Credentials.ClientSecret != "v" {
		t.Errorf("a good file: %v", err)
	}
}

// TestCheckTenantURLAgreesWithQlik: Validate checks tenant URLs by qlik.New's
// rules without building a client; the two must agree.
func TestCheckTenantURLAgreesWithQlik(t *testing.T) {
	for _, u := range []string{"https://acme.eu.qlikcloud.com", "https://acme.eu.qlikcloud.com/", "http://127.0.0.1:8080",
		"http://localhost:1", "http://[::1]:9", "http://acme.eu.qlikcloud.com", "acme.eu.qlikcloud.com", "ftp://acme",
		"https://user:pw@acme", "https://acme/?x=1", "https://acme/?", "https://acme/#f", "https://acme/path", "https://",
		"https://acme\x7f", "", "mailto:a@b"} {
		_, qerr := qlik.New(u, qlik.Options{})
		cerr := checkTenantURL(u)
		if (qerr == nil) != (cerr == nil) || (qerr != nil && qerr.Error() != cerr.Error()) {
			t.Errorf("%q: qlik.New says %v, checkTenantURL %v", u, qerr, cerr)
		}
	}
}
