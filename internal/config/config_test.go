package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(path, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{
		"QTB_TENANT_URL": "https://acme.eu.qlikcloud.com", "QTB_CLIENT_ID": "c",
		"QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32), "QTB_CLIENT_SECRET_FILE": path,
	}
	cfg, err := Load(nil, envFunc(base))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientSecret != "from-file" {
		t.Errorf("client secret from file = %q", string(cfg.ClientSecret))
	}
	base["QTB_CLIENT_SECRET"] = "inline"
	if _, err := Load(nil, envFunc(base)); err == nil || !strings.Contains(err.Error(), "set one, not both") {
		t.Errorf("secret set twice: %v", err)
	}
	delete(base, "QTB_CLIENT_SECRET")
	base["QTB_CLIENT_SECRET_FILE"] = filepath.Join(dir, "missing")
	if _, err := Load(nil, envFunc(base)); err == nil || !strings.Contains(err.Error(), "QTB_CLIENT_SECRET_FILE") {
		t.Errorf("missing secret file: %v", err)
	}
	// Flags override the environment.
	delete(base, "QTB_CLIENT_SECRET_FILE")
	base["QTB_CLIENT_SECRET"] = "env"
	cfg, err = Load([]string{"--client-id", "from-flag"}, envFunc(base))
	if err != nil || cfg.ClientID != "from-flag" {
		t.Errorf("flag override: %v %q", err, cfg.ClientID)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("hunter2")
	for _, out := range []string{s.String(), s.GoString(), s.LogValue().String()} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("secret printed as %q", out)
		}
	}
	raw, _ := json.Marshal(struct{ S Secret }{s})
	if strings.Contains(string(raw), "hunter2") {
		t.Errorf("secret marshalled as %s", raw)
	}
}
