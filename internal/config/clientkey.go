package config

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// Private Key JWT: a tenant's OAuth clients may prove themselves with a
// private key (QTB_CLIENT_KEY_FILE, clientKeyFile) instead of a secret.
// Keys are files only; each is read by Load (and by the reloaders after a
// 401 or on SIGHUP), and an error names the file, never its bytes.

// keyAlgs are the values QTB_CLIENT_KEY_ALG may take ("" picks by key type).
var keyAlgs = []string{"", qlik.AlgRS256, qlik.AlgRS512, qlik.AlgES384}

// ReadSigningKeyFile reads a PEM private key (PKCS#8, PKCS#1 or SEC1) and
// names it kid (empty: the RFC 7638 thumbprint) for alg (empty: RS256 for
// RSA, ES384 for P-384). Errors name the file, never its content.
func ReadSigningKeyFile(path, kid, alg string) (*qlik.SigningKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	k, err := qlik.ParseSigningKey(raw, kid, alg)
	if err != nil {
		// qlik's errors describe the key's kind, never its bytes.
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// clientKeys maps each key-file setting to where its key goes.
func (c *Config) clientKeys() []struct {
	fileEnv, idEnv, algEnv string
	file, kid, alg         string
	dst                    **qlik.SigningKey
} {
	return []struct {
		fileEnv, idEnv, algEnv string
		file, kid, alg         string
		dst                    **qlik.SigningKey
	}{
		{"QTB_CLIENT_KEY_FILE", "QTB_CLIENT_KEY_ID", "QTB_CLIENT_KEY_ALG", c.ClientKeyFile, c.ClientKeyID, c.ClientKeyAlg, &c.ClientKey},
		{"QTB_ADMIN_CLIENT_KEY_FILE", "QTB_ADMIN_CLIENT_KEY_ID", "QTB_ADMIN_CLIENT_KEY_ALG", c.AdminClientKeyFile, c.AdminClientKeyID, c.AdminClientKeyAlg, &c.AdminClientKey},
	}
}

// loadClientKeys reads the key files the settings name; problems are
// returned for Validate to list.
func (c *Config) loadClientKeys() []error {
	var problems []error
	for _, k := range c.clientKeys() {
		if k.file == "" || !slices.Contains(keyAlgs, k.alg) {
			continue // Validate names what is wrong
		}
		key, err := ReadSigningKeyFile(k.file, k.kid, k.alg)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", k.fileEnv, err))
			continue
		}
		*k.dst = key
	}
	return problems
}

// checkClientKeys reports, without I/O, the key settings that do not fit:
// an algorithm Qlik does not take, an id or algorithm without a key file,
// a client with both a secret and a key, key settings beside a tenants
// file.
func (c Config) checkClientKeys(add func(env, format string, a ...any)) {
	for _, k := range c.clientKeys() {
		if !slices.Contains(keyAlgs, k.alg) {
			add(k.algEnv, "must be RS256 or RS512 (RSA) or ES384 (P-384), got %q", k.alg)
		}
		if k.file == "" && (k.kid != "" || k.alg != "") {
			add(k.fileEnv, "required with %s and %s", k.idEnv, k.algEnv)
		}
		if k.file != "" && c.TenantsFile != "" {
			add(k.fileEnv, "QTB_TENANTS_FILE replaces it: set clientKeyFile and adminClientKeyFile per tenant")
		}
	}
	if c.ClientKeyFile != "" && (c.ClientSecret != "" || c.ClientSecretFile != "") {
		add("QTB_CLIENT_KEY_FILE", "set a client secret (QTB_CLIENT_SECRET(_FILE)) or a key, not both")
	}
	if c.AdminClientKeyFile != "" && (c.AdminClientSecret != "" || c.AdminClientSecretFile != "") {
		add("QTB_ADMIN_CLIENT_KEY_FILE", "set an admin client secret (QTB_ADMIN_CLIENT_SECRET(_FILE)) or a key, not both")
	}
	if c.AdminClientKeyFile != "" && c.AdminClientID == "" {
		add("QTB_ADMIN_CLIENT_KEY_FILE", "needs QTB_ADMIN_CLIENT_ID")
	}
}

// readKeys reads the key files of a tenants-file entry.
func (t *Tenant) readKeys() {
	for _, k := range []struct {
		name, file, kid, alg string
		dst                  **qlik.SigningKey
	}{
		{"clientKeyFile", t.ClientKeyFile, t.ClientKeyID, t.ClientKeyAlg, &t.ClientKey},
		{"adminClientKeyFile", t.AdminClientKeyFile, t.AdminClientKeyID, t.AdminClientKeyAlg, &t.AdminClientKey},
	} {
		if k.file == "" || !slices.Contains(keyAlgs, k.alg) {
			continue
		}
		key, err := ReadSigningKeyFile(k.file, k.kid, k.alg)
		if err != nil {
			t.readErrs = append(t.readErrs, fmt.Errorf("%s: %w", k.name, err))
			continue
		}
		*k.dst = key
	}
}

// checkKeys reports the key fields of a tenants-file entry that do not fit.
func (t Tenant) checkKeys() []error {
	var errs []error
	for _, k := range []struct{ prefix, file, kid, alg string }{
		{"client", t.ClientKeyFile, t.ClientKeyID, t.ClientKeyAlg},
		{"adminClient", t.AdminClientKeyFile, t.AdminClientKeyID, t.AdminClientKeyAlg},
	} {
		if !slices.Contains(keyAlgs, k.alg) {
			errs = append(errs, fmt.Errorf("%sKeyAlg must be RS256 or RS512 (RSA) or ES384 (P-384), got %q", k.prefix, k.alg))
		}
		if k.file == "" && (k.kid != "" || k.alg != "") {
			errs = append(errs, fmt.Errorf("%sKeyFile is required with %sKeyId and %sKeyAlg", k.prefix, k.prefix, k.prefix))
		}
	}
	if t.ClientSecretFile != "" && t.ClientKeyFile != "" {
		errs = append(errs, errors.New("set clientSecretFile or clientKeyFile, not both"))
	}
	if t.AdminClientSecretFile != "" && t.AdminClientKeyFile != "" {
		errs = append(errs, errors.New("set adminClientSecretFile or adminClientKeyFile, not both"))
	}
	if t.AdminClientKeyFile != "" && t.AdminClientID == "" {
		errs = append(errs, errors.New("adminClientKeyFile needs adminClientId"))
	}
	return errs
}

// keyReloader re-reads a key file, for rotation; nil without a file.
func keyReloader(path, kid, alg string) func() (*qlik.SigningKey, error) {
	if path == "" {
		return nil
	}
	return func() (*qlik.SigningKey, error) { return ReadSigningKeyFile(path, kid, alg) }
}
