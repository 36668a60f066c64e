package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"sigs.k8s.io/yaml"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestAdminCommandsDispatch: run hands `clients`, `provision` and `groups` to the
// admin commands (which internal/admin tests in depth).
func TestAdminCommandsDispatch(t *testing.T) {
	for _, args := range [][]string{{"clients", "-h"}, {"clients", "create", "-h"}, {"provision", "-h"}, {"groups", "-h"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, envFunc(nil), &out, &out); err != nil || !strings.Contains(out.String(), "--tenant-url") {
			t.Errorf("%v: %v\n%s", args, err, out.String())
		}
	}
}

// TestProvisionedTenantServes: the tenants-file entry and Secret that
// `provision` writes against a fresh tenant serve a real /v1/token call at
// once, through `serve`.
func TestProvisionedTenantServes(t *testing.T) {
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	admin := tn.AddAdminClient()
	dir := t.TempDir()
	registry, secret, mountDir := filepath.Join(dir, "tenants.yaml"), filepath.Join(dir, "secret.yaml"), filepath.Join(dir, "mount", "acme")
	env := map[string]string{
		"QTB_TENANT_URL": tn.URL(), "QTB_ADMIN_CLIENT_ID": admin.ID,
		"QTB_ADMIN_CLIENT_SECRET_FILE": writeSecretFile(t, "admin-secret", admin.Secret),
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"provision", "--tenant-id", "acme", "--origin", "https://app.example.com",
		"--secret-mount-dir", mountDir, "--registry-out", registry, "--secret-out", secret}, envFunc(env), &out, &out); err != nil {
		t.Fatalf("provision: %v\n%s", err, out.String())
	}

	// Mount the Secret's value where Kubernetes would.
	raw, err := os.ReadFile(secret)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		StringData map[string]string `json:"stringData"`
	}
	if err := yaml.Unmarshal(raw, &m); err != nil || m.StringData["client-secret"] == "" {
		t.Fatalf("secret manifest (%v):\n%s", err, raw)
	}
	if err := os.MkdirAll(mountDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mountDir, "client-secret"), []byte(m.StringData["client-secret"]), 0o600); err != nil {
		t.Fatal(err)
	}

	base := startServe(t, map[string]string{"QTB_TENANTS_FILE": registry, "QTB_TENANT_CLAIM": "tenant",
		"QTB_SESSION_HMAC_SECRET": testHMAC, "QTB_SHUTDOWN_TIMEOUT": "5s"})
	ada := tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Status: "active"})
	code, tok := fetchToken(base, sessionFor(t, jwt.MapClaims{"sub": ada.ID, "tenant": "acme"}))
	if code != 200 {
		t.Fatalf("/v1/token: %d %s", code, tok)
	}
	if u, err := tn.TokenUser(tok); err != nil || u.ID != ada.ID {
		t.Fatalf("the token acts for %v (%v), want %s", u.ID, err, ada.ID)
	}
}
