package admin

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// provisionRun is a provision setup: files in a temporary directory, the
// Secret "mounted" in a directory of its own.
type provisionRun struct {
	*adminTenant
	registry, secret, mountDir string
}

func newProvisionRun(t *testing.T) *provisionRun {
	t.Helper()
	a := newAdminTenant(t)
	return &provisionRun{
		adminTenant: a,
		registry:    filepath.Join(a.dir, "tenants.yaml"),
		secret:      filepath.Join(a.dir, "secret.yaml"),
		mountDir:    filepath.Join(a.dir, "mount", "acme"),
	}
}

// provision runs `provision` for tenant acme with extra flags.
func (p *provisionRun) provision(t *testing.T, extra ...string) (string, error) {
	t.Helper()
	args := append([]string{"provision", "--tenant-id", "acme", "--origin", "https://app.example.com",
		"--redirect-uri", "https://app.example.com/callback", "--secret-mount-dir", p.mountDir,
		"--registry-out", p.registry, "--secret-out", p.secret}, extra...)
	out, stderr, err := p.run(t, nil, args...)
	if stderr != "" {
		t.Errorf("provision wrote to stderr: %s", stderr)
	}
	return out, err
}

// storedSecret parses the Secret manifest and returns its client secret.
func (p *provisionRun) storedSecret(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(p.secret)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Type       string `json:"type"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
		StringData map[string]string `json:"stringData"`
	}
	if err := yaml.UnmarshalStrict(raw, &m); err != nil {
		t.Fatalf("secret manifest: %v\n%s", err, raw)
	}
	if m.APIVersion != "v1" || m.Kind != "Secret" || m.Type != "Opaque" || m.Metadata.Name != "qtb-acme" || m.StringData["client-secret"] == "" {
		t.Fatalf("secret manifest:\n%s", raw)
	}
	return m.StringData["client-secret"]
}

func (p *provisionRun) readRegistry(t *testing.T) config.TenantsFile {
	t.Helper()
	raw, err := os.ReadFile(p.registry)
	if err != nil {
		t.Fatal(err)
	}
	var f config.TenantsFile
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		t.Fatalf("tenants file: %v\n%s", err, raw)
	}
	return f
}

func mustMode0600(t *testing.T, files ...string) {
	t.Helper()
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
}

func readFiles(t *testing.T, files ...string) string {
	t.Helper()
	var b strings.Builder
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(raw)
	}
	return b.String()
}

// TestProvisionFreshTenant: against an empty tenant, provision creates the
// client as the broker needs it, trusts it, and writes a tenants-file entry
// and Secret that a broker serves tokens with straight away. A second run
// changes nothing.
func TestProvisionFreshTenant(t *testing.T) {
	p := newProvisionRun(t)
	tn := p.tn

	// Another tenant is already registered: it must survive.
	globexSecret := p.writeFile(t, "globex-secret", "globex-secret-value")
	globex := config.TenantEntry{ID: "globex", URL: "https://globex.eu.qlikcloud.com", ClientID: "globex-client",
		ClientSecretFile: globexSecret, UserLookup: "subject"}
	raw, _ := yaml.Marshal(config.TenantsFile{Tenants: []config.TenantEntry{globex}})
	p.writeFile(t, "tenants.yaml", string(raw))

	out, err := p.provision(t)
	if err != nil {
		t.Fatalf("provision: %v\n%s", err, out)
	}
	c, ok := tn.OAuthClientByName("qlik-token-broker")
	if !ok {
		t.Fatalf("no client qlik-token-broker at the tenant:\n%s", out)
	}
	for _, want := range []string{`created client "qlik-token-broker" (id ` + c.ID + ")", "set consent trusted",
		"wrote " + p.secret + " (Secret qtb-acme)", "wrote " + p.registry + " (tenant acme)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if c.AppType != "web" || c.ConsentMethod != "trusted" ||
		!slices.Equal(c.AllowedGrants, []string{"client_credentials", qlik.GrantImpersonation}) ||
		!slices.Equal(c.AllowedScopes, []string{"user_default"}) ||
		!slices.Equal(c.AllowedOrigins, []string{"https://app.example.com"}) ||
		!slices.Equal(c.RedirectURIs, []string{"https://app.example.com/callback"}) {
		t.Fatalf("the client is not as specified: %+v", c)
	}
	mustMode0600(t, p.registry, p.secret)
	sec := p.storedSecret(t)
	if sec != c.Secret {
		t.Fatal("the Secret does not hold the client's secret")
	}
	if strings.Contains(out, sec) {
		t.Fatal("provision printed the secret without --show-secret")
	}
	reg := p.readRegistry(t)
	if len(reg.Tenants) != 2 || reg.Tenants[0].ID != "globex" || reg.Tenants[0].UserLookup != "subject" || reg.Tenants[0].ClientID != "globex-client" {
		t.Fatalf("the other tenant was not kept: %+v", reg.Tenants)
	}
	want := config.TenantEntry{ID: "acme", URL: tn.URL(), ClientID: c.ID, ClientSecretFile: filepath.Join(p.mountDir, "client-secret"),
		AllowedOrigins: []string{"https://app.example.com"}}
	if got := reg.Tenants[1]; got.ID != want.ID || got.URL != want.URL || got.ClientID != want.ClientID ||
		got.ClientSecretFile != want.ClientSecretFile || !slices.Equal(got.AllowedOrigins, want.AllowedOrigins) {
		t.Fatalf("entry %+v, want %+v", got, want)
	}

	// That the entry works for a real /v1/token call at once is
	// TestProvisionedTenantServes, in package main: it runs `serve`.

	// Second run: everything is in place; no write call, no file change.
	writes, files := tn.WriteCalls(), readFiles(t, p.registry, p.secret)
	out, err = p.provision(t)
	if err != nil {
		t.Fatalf("second provision: %v\n%s", err, out)
	}
	if !strings.HasPrefix(out, "nothing to do") {
		t.Errorf("second run:\n%s", out)
	}
	if n := tn.WriteCalls() - writes; n != 0 {
		t.Errorf("second run made %d write calls", n)
	}
	if readFiles(t, p.registry, p.secret) != files {
		t.Error("second run changed the files")
	}
	// --show-secret prints it, and only then.
	out, err = p.provision(t, "--show-secret")
	if err != nil || !strings.Contains(out, "client secret: "+sec+"\n") {
		t.Errorf("--show-secret: %v\n%s", err, out)
	}
}

// TestProvisionReportsAndFixes: a client that lacks settings is reported,
// each difference listed, with no change anywhere; --dry-run --fix shows the
// plan; --fix corrects it, keeping what the client has beyond the needs.
func TestProvisionReportsAndFixes(t *testing.T) {
	p := newProvisionRun(t)
	tn := p.tn
	c := tn.AddClient(qliktest.OAuthClient{Name: "qlik-token-broker", AllowedGrants: []string{"client_credentials"},
		AllowedScopes: []string{"apps:read"}, AllowedOrigins: []string{"https://old.example.com"}, ConsentMethod: "required"})
	// An entry for acme exists: provision updates it, keeping its userLookup.
	p.writeFile(t, "tenants.yaml", "tenants:\n  - id: acme\n    url: https://old.example.com\n    clientId: stale\n    clientSecretFile: /x\n    userLookup: userId\n")
	registryBefore := readFiles(t, p.registry)

	writes := tn.WriteCalls()
	out, err := p.provision(t)
	if err == nil {
		t.Fatalf("provision accepted a client without the impersonation grant:\n%s", out)
	}
	for _, want := range []string{
		"allowedGrantTypes lacks " + qlik.GrantImpersonation,
		"allowedScopes lacks user_default",
		"allowedOrigins lacks https://app.example.com",
		"redirectUris lacks https://app.example.com/callback",
		"consent is required, want trusted",
		"client secret unknown",
		"--fix",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("report lacks %q:\n%v", want, err)
		}
	}
	if n := tn.WriteCalls() - writes; n != 0 {
		t.Fatalf("a report-only run made %d write calls", n)
	}
	if _, err := os.Stat(p.secret); err == nil || readFiles(t, p.registry) != registryBefore {
		t.Fatal("a report-only run wrote files")
	}

	out, err = p.provision(t, "--fix", "--dry-run")
	if err != nil {
		t.Fatalf("--fix --dry-run: %v", err)
	}
	for _, want := range []string{"would update client " + c.ID, "would set consent trusted", "would create a new client secret",
		"would write " + p.secret, "would write " + p.registry, "dry run: nothing was changed"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if n := tn.WriteCalls() - writes; n != 0 {
		t.Fatalf("--dry-run made %d write calls", n)
	}
	if _, err := os.Stat(p.secret); err == nil || readFiles(t, p.registry) != registryBefore {
		t.Fatal("--dry-run wrote files")
	}

	out, err = p.provision(t, "--fix")
	if err != nil {
		t.Fatalf("--fix: %v\n%s", err, out)
	}
	fixed, _ := tn.OAuthClient(c.ID)
	if !slices.Equal(fixed.AllowedGrants, []string{"client_credentials", qlik.GrantImpersonation}) ||
		!slices.Equal(fixed.AllowedScopes, []string{"apps:read", "user_default"}) ||
		!slices.Equal(fixed.AllowedOrigins, []string{"https://old.example.com", "https://app.example.com"}) ||
		fixed.ConsentMethod != "trusted" {
		t.Fatalf("after --fix the client is %+v", fixed)
	}
	if n := tn.WriteCalls() - writes; n != 3 { // one PATCH, consent, a new secret
		t.Errorf("--fix made %d write calls, want 3", n)
	}
	if p.storedSecret(t) != fixed.Secret {
		t.Fatal("the Secret does not hold the client's new secret")
	}
	reg := p.readRegistry(t)
	if len(reg.Tenants) != 1 || reg.Tenants[0].ClientID != c.ID || reg.Tenants[0].URL != tn.URL() || reg.Tenants[0].UserLookup != "userId" {
		t.Fatalf("registry after --fix: %+v", reg.Tenants)
	}
	mustMode0600(t, p.registry, p.secret)

	// Settled: nothing to do, even with --fix.
	writes = tn.WriteCalls()
	if out, err := p.provision(t, "--fix"); err != nil || !strings.HasPrefix(out, "nothing to do") {
		t.Fatalf("after --fix: %v\n%s", err, out)
	}
	if n := tn.WriteCalls() - writes; n != 0 {
		t.Fatalf("%d write calls after everything was fixed", n)
	}

	// A web client is the only kind that can work; its type cannot change.
	p2 := newProvisionRun(t)
	p2.tn.AddClient(qliktest.OAuthClient{Name: "qlik-token-broker", AppType: "spa", AllowedGrants: []string{}})
	if _, err := p2.provision(t, "--fix"); err == nil || !strings.Contains(err.Error(), "spa client") {
		t.Fatalf("an spa client: %v", err)
	}
}

// TestProvisionSecret: a client found without its secret is reported until
// --rotate-secret (or --fix) makes a new one; a stale stored secret is
// detected.
func TestProvisionSecret(t *testing.T) {
	p := newProvisionRun(t)
	tn := p.tn
	if out, err := p.provision(t); err != nil {
		t.Fatalf("provision: %v\n%s", err, out)
	}
	c, _ := tn.OAuthClientByName("qlik-token-broker")
	first := p.storedSecret(t)

	os.Remove(p.secret)
	writes := tn.WriteCalls()
	_, err := p.provision(t)
	if err == nil || !strings.Contains(err.Error(), "client secret unknown") || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("secret file gone: %v", err)
	}
	if n := tn.WriteCalls() - writes; n != 0 {
		t.Fatalf("%d write calls without --fix/--rotate-secret", n)
	}

	out, err := p.provision(t, "--rotate-secret")
	if err != nil || !strings.Contains(out, "created client secret") || !strings.Contains(out, "wrote "+p.secret) {
		t.Fatalf("--rotate-secret: %v\n%s", err, out)
	}
	second := p.storedSecret(t)
	if c2, _ := tn.OAuthClient(c.ID); second == first || c2.Secret != second {
		t.Fatal("--rotate-secret did not store the client's new secret")
	}
	if n := tn.WriteCalls() - writes; n != 1 {
		t.Fatalf("--rotate-secret made %d write calls, want 1", n)
	}
	mustMode0600(t, p.secret)

	// A stored secret the tenant no longer accepts.
	tn.SetClientSecret(c.ID, "rotated-elsewhere")
	writes = tn.WriteCalls()
	if _, err := p.provision(t); err == nil || !strings.Contains(err.Error(), "not valid for this client") {
		t.Fatalf("stale secret: %v", err)
	}
	if out, err := p.provision(t, "--fix"); err != nil || !strings.Contains(out, "created client secret") {
		t.Fatalf("stale secret --fix: %v\n%s", err, out)
	}
	if c2, _ := tn.OAuthClient(c.ID); c2.Secret != p.storedSecret(t) || tn.WriteCalls()-writes != 1 {
		t.Fatal("--fix did not replace the stale secret")
	}
}

// TestProvisionDryRun: on a fresh tenant a dry run plans everything and
// changes nothing.
func TestProvisionDryRun(t *testing.T) {
	p := newProvisionRun(t)
	out, err := p.provision(t, "--dry-run")
	if err != nil {
		t.Fatalf("--dry-run: %v", err)
	}
	for _, want := range []string{`would create client "qlik-token-broker"`, "would set consent trusted",
		"would write " + p.secret, "would write " + p.registry, "dry run: nothing was changed"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if n := p.tn.WriteCalls(); n != 0 {
		t.Fatalf("--dry-run made %d write calls", n)
	}
	if _, ok := p.tn.OAuthClientByName("qlik-token-broker"); ok {
		t.Fatal("--dry-run created the client")
	}
	for _, f := range []string{p.secret, p.registry} {
		if _, err := os.Stat(f); err == nil {
			t.Fatalf("--dry-run wrote %s", f)
		}
	}
}

func TestProvisionRefusesBadInput(t *testing.T) {
	p := newProvisionRun(t)
	p.writeFile(t, "not-a-secret.yaml", "apiVersion: v1\nkind: ConfigMap\n")
	p.writeFile(t, "bad-tenants.yaml", "tenants:\n  - id: x\n    typo: 1\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"provision", "--registry-out", p.registry, "--secret-out", p.secret}, "--tenant-id is required"},
		{[]string{"provision", "--tenant-id", "acme", "--secret-out", p.secret}, "--registry-out is required"},
		{[]string{"provision", "--tenant-id", "acme", "--registry-out", p.registry, "--secret-out", p.registry}, "must differ"},
		{[]string{"provision", "--tenant-id", "Acme", "--registry-out", p.registry, "--secret-out", p.secret}, `--tenant-id: tenant id "Acme": use 1 to 63 lower-case letters`},
		{[]string{"provision", "--tenant-id", "acme", "--secret-name", "Qtb_Acme", "--registry-out", p.registry, "--secret-out", p.secret}, "--secret-name"},
		{[]string{"provision", "--tenant-id", "acme", "--origin", "https://*.example.com", "--registry-out", p.registry, "--secret-out", p.secret}, "wildcards"},
		{[]string{"provision", "--tenant-id", "acme", "--secret-mount-dir", "rel/dir", "--registry-out", p.registry, "--secret-out", p.secret}, "absolute"},
		{[]string{"provision", "--tenant-id", "acme", "--registry-out", p.registry, "--secret-out", filepath.Join(p.dir, "not-a-secret.yaml")}, "not a Secret"},
		{[]string{"provision", "--tenant-id", "acme", "--registry-out", filepath.Join(p.dir, "bad-tenants.yaml"), "--secret-out", p.secret}, "not a tenants file"},
		{[]string{"provision", "--tenant-id", "acme", "--registry-out", p.registry, "--secret-out", filepath.Join(p.dir, "nope", "s.yaml")}, "does not exist"},
	} {
		if _, _, err := p.run(t, nil, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args[1:], err, tc.want)
		}
	}
	if n := p.tn.WriteCalls() + p.tn.Calls(qliktest.EndpointOAuthClients); n != 0 {
		t.Fatalf("refused runs reached the tenant %d times", n)
	}
}
