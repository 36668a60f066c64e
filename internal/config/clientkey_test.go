package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeKeyFile writes a PKCS#8 PEM of key to a temporary file.
func writeKeyFile(t *testing.T, key any) (path string, pemBytes []byte) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	path = filepath.Join(t.TempDir(), "client-key.pem")
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, pemBytes
}

// TestClientKeyInsteadOfSecret: a key file alone configures the client;
// the tenant gets the key and a reloader, and no secret.
func TestClientKeyInsteadOfSecret(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaFile, _ := writeKeyFile(t, rsaKey)
	ecFile, _ := writeKeyFile(t, ecKey)
	cfg, err := Load(nil, envFunc(with(base, "QTB_CLIENT_SECRET", "", "QTB_CLIENT_KEY_FILE", rsaFile, "QTB_CLIENT_KEY_ALG", "RS512",
		"QTB_USER_LOOKUP", "email", "QTB_ADMIN_CLIENT_ID", "admin", "QTB_ADMIN_CLIENT_KEY_FILE", ecFile, "QTB_ADMIN_CLIENT_KEY_ID", "adm-1")))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := cfg.BrokerTenants(http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	creds := ts[0].Credentials
	if creds.ClientSecret != "" || creds.Key == nil || creds.Key.Algorithm() != "RS512" || creds.Key.KeyID() != creds.Key.PublicJWK().Thumbprint() {
		t.Fatalf("credentials %v", creds)
	}
	if ts[0].ReloadKey == nil || ts[0].ReloadSecret != nil || ts[0].Directory == nil {
		t.Fatalf("tenant %+v", ts[0])
	}
	if k, err := ts[0].ReloadKey(); err != nil || !k.Equal(creds.Key) {
		t.Errorf("ReloadKey = %v, %v", k, err)
	}
	if cfg.AdminClientKey == nil || cfg.AdminClientKey.KeyID() != "adm-1" || cfg.AdminClientKey.Algorithm() != "ES384" {
		t.Errorf("admin key %v", cfg.AdminClientKey)
	}
}

// TestClientKeyProblems: every misuse is named by its variable, and a key
// that does not parse names its file, never its bytes.
func TestClientKeyProblems(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsaFile, _ := writeKeyFile(t, rsaKey)
	smallFile, _ := writeKeyFile(t, small)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	secretBytes := "-----BEGIN PRIVATE KEY-----\nTUlJQ0FBQUFBQUFBQUFBQUFBQUFBQUFB\n-----END PRIVATE KEY-----\n"
	if err := os.WriteFile(garbage, []byte(secretBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"secret and key", []string{"QTB_CLIENT_KEY_FILE", rsaFile}, "QTB_CLIENT_KEY_FILE: set a client secret"},
		{"neither", []string{"QTB_CLIENT_SECRET", ""}, "QTB_CLIENT_SECRET: required (or QTB_CLIENT_SECRET_FILE, or QTB_CLIENT_KEY_FILE)"},
		{"unknown alg", []string{"QTB_CLIENT_SECRET", "", "QTB_CLIENT_KEY_FILE", rsaFile, "QTB_CLIENT_KEY_ALG", "PS256"}, "QTB_CLIENT_KEY_ALG: must be RS256 or RS512"},
		{"alg not the key's", []string{"QTB_CLIENT_SECRET", "", "QTB_CLIENT_KEY_FILE", rsaFile, "QTB_CLIENT_KEY_ALG", "ES384"}, "QTB_CLIENT_KEY_FILE: key file " + rsaFile},
		{"small RSA", []string{"QTB_CLIENT_SECRET", "", "QTB_CLIENT_KEY_FILE", smallFile}, "at least 2048"},
		{"garbage", []string{"QTB_CLIENT_SECRET", "", "QTB_CLIENT_KEY_FILE", garbage}, "QTB_CLIENT_KEY_FILE: key file " + garbage},
		{"missing", []string{"QTB_CLIENT_SECRET", "", "QTB_CLIENT_KEY_FILE", garbage + ".gone"}, "QTB_CLIENT_KEY_FILE: read key file"},
		{"id without file", []string{"QTB_CLIENT_KEY_ID", "k"}, "QTB_CLIENT_KEY_FILE: required with"},
		{"admin key without id", []string{"QTB_ADMIN_CLIENT_KEY_FILE", rsaFile}, "QTB_ADMIN_CLIENT_KEY_FILE: needs QTB_ADMIN_CLIENT_ID"},
		{"admin secret and key", []string{"QTB_ADMIN_CLIENT_ID", "a", "QTB_ADMIN_CLIENT_SECRET", "s", "QTB_ADMIN_CLIENT_KEY_FILE", rsaFile}, "QTB_ADMIN_CLIENT_KEY_FILE: set an admin client secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(nil, envFunc(with(base, tt.env...)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "TUlJQ0FB") {
				t.Errorf("the error quotes the key file: %v", err)
			}
		})
	}
}

// TestTenantsFileKeys: clientKeyFile and adminClientKeyFile replace the
// secret files; exactly one of each pair.
func TestTenantsFileKeys(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaFile, _ := writeKeyFile(t, rsaKey)
	ecFile, _ := writeKeyFile(t, ecKey)
	secret := writeSecretFile(t, "s", "v")
	good := "tenants:\n  - id: acme\n    url: https://acme.eu.qlikcloud.com\n    clientId: c\n    clientKeyFile: " + rsaFile +
		"\n    clientKeyId: k1\n    userLookup: email\n    adminClientId: a\n    adminClientKeyFile: " + ecFile + "\n    adminClientKeyAlg: ES384\n"
	var cfg Config
	ts, err := cfg.ReloadTenants([]byte(good), http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	if k := ts[0].Credentials.Key; k == nil || k.KeyID() != "k1" || ts[0].Credentials.ClientSecret != "" || ts[0].ReloadKey == nil {
		t.Fatalf("tenant %+v", ts[0])
	}
	bad := "tenants:\n  - id: acme\n    url: https://acme.eu.qlikcloud.com\n    clientId: c\n    clientKeyFile: " + rsaFile +
		"\n    clientSecretFile: " + secret + "\n    clientKeyAlg: HS256\n    adminClientId: a\n    adminClientSecretFile: " + secret +
		"\n    adminClientKeyFile: " + ecFile + "\n"
	_, err = cfg.ReloadTenants([]byte(bad), http.DefaultClient)
	for _, want := range []string{"set clientSecretFile or clientKeyFile, not both", "clientKeyAlg must be RS256",
		"set adminClientSecretFile or adminClientKeyFile, not both"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
