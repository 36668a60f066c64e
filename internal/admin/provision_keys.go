package admin

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// Private Key JWT provisioning (`provision --auth private-key-jwt`): the
// client proves itself with a key pair; the tenant holds the public JWK,
// the Secret the private key. Rotation adds a new public key beside the
// old one (--rotate-key) and later drops the old (--finish).

// Values of --auth.
const (
	authClientSecret  = "client-secret"
	authPrivateKeyJWT = "private-key-jwt"
)

// Auth methods as the tenant names them.
const (
	methodClientSecret  = "client_secret"
	methodPrivateKeyJWT = "private_key_jwt"
)

// keyEntry is the key of the private key in the Secret, and so the file
// name under the mount directory.
const keyEntry = "client-key.pem"

// generatedRSABits is the size of generated RSA keys: above Qlik's minimum
// of 2048, and rotation keeps their life short.
const generatedRSABits = 3072

// keyOptions are the flags of Private Key JWT provisioning.
type keyOptions struct {
	auth           string
	keyAlg         string
	keyID          string
	publicKeyFile  string
	privateKeyFile string
	rotateKey      bool
	finish         bool
}

func (o *keyOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.auth, "auth", authClientSecret, "how the client authenticates: client-secret or private-key-jwt")
	fs.StringVar(&o.keyAlg, "key-alg", "", "with private-key-jwt: RS256 (default for RSA), RS512 or ES384 (P-384); a generated key follows it")
	fs.StringVar(&o.keyID, "key-id", "", "with private-key-jwt: kid of the new key (default: its RFC 7638 thumbprint, which the broker derives itself)")
	fs.StringVar(&o.publicKeyFile, "public-key-file", "", "with private-key-jwt: register this PEM public key instead of generating a pair (the private key stays where it is)")
	fs.StringVar(&o.privateKeyFile, "private-key-file", "", "with private-key-jwt: use this PEM private key instead of generating one")
	fs.BoolVar(&o.rotateKey, "rotate-key", false, "with private-key-jwt: register a new key beside the current ones and store it; the old keys keep working until --finish")
	fs.BoolVar(&o.finish, "finish", false, "with private-key-jwt: remove every registered key but the stored one, and client_secret authentication")
}

func (o keyOptions) validate() error {
	var errs []error
	switch o.auth {
	case authClientSecret:
		if o.keyAlg != "" || o.keyID != "" || o.publicKeyFile != "" || o.privateKeyFile != "" || o.rotateKey || o.finish {
			errs = append(errs, errors.New("--key-alg, --key-id, --public-key-file, --private-key-file, --rotate-key and --finish need --auth private-key-jwt"))
		}
	case authPrivateKeyJWT:
	default:
		errs = append(errs, fmt.Errorf("--auth must be %s or %s, got %q", authClientSecret, authPrivateKeyJWT, o.auth))
	}
	if !slices.Contains([]string{"", qlik.AlgRS256, qlik.AlgRS512, qlik.AlgES384}, o.keyAlg) {
		errs = append(errs, fmt.Errorf("--key-alg must be RS256, RS512 or ES384, got %q", o.keyAlg))
	}
	if o.rotateKey && o.finish {
		errs = append(errs, errors.New("--rotate-key and --finish are separate steps: rotate, roll the brokers, then finish"))
	}
	return errors.Join(errs...)
}

// keyAuth reports whether this run provisions Private Key JWT.
func (p *provisioner) keyAuth() bool { return p.o.keys.auth == authPrivateKeyJWT }

// wantAuthMethod is the auth method the client must allow.
func (p *provisioner) wantAuthMethod() string {
	if p.keyAuth() {
		return methodPrivateKeyJWT
	}
	return methodClientSecret
}

// newKeyPair is the key to register: from --private-key-file or
// --public-key-file, or generated. privPEM is nil when only the public key
// was given.
func (p *provisioner) newKeyPair() (jwk qlik.JWK, privPEM []byte, err error) {
	o := p.o.keys
	switch {
	case o.privateKeyFile != "":
		raw, err := os.ReadFile(o.privateKeyFile)
		if err != nil {
			return qlik.JWK{}, nil, fmt.Errorf("--private-key-file: %w", err)
		}
		k, err := qlik.ParseSigningKey(raw, o.keyID, o.keyAlg)
		if err != nil {
			return qlik.JWK{}, nil, fmt.Errorf("--private-key-file %s: %w", o.privateKeyFile, err)
		}
		if o.publicKeyFile != "" {
			pub, err := p.publicJWK()
			if err != nil {
				return qlik.JWK{}, nil, err
			}
			if pub.Thumbprint() != k.PublicJWK().Thumbprint() {
				return qlik.JWK{}, nil, errors.New("--public-key-file is not the public half of --private-key-file")
			}
		}
		return k.PublicJWK(), raw, nil
	case o.publicKeyFile != "":
		jwk, err := p.publicJWK()
		return jwk, nil, err
	}
	var priv crypto.Signer
	if o.keyAlg == qlik.AlgES384 {
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	} else {
		priv, err = rsa.GenerateKey(rand.Reader, generatedRSABits)
	}
	if err != nil {
		return qlik.JWK{}, nil, err
	}
	k, err := qlik.NewSigningKey(priv, o.keyID, o.keyAlg)
	if err != nil {
		return qlik.JWK{}, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return qlik.JWK{}, nil, err
	}
	return k.PublicJWK(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func (p *provisioner) publicJWK() (qlik.JWK, error) {
	raw, err := os.ReadFile(p.o.keys.publicKeyFile)
	if err != nil {
		return qlik.JWK{}, fmt.Errorf("--public-key-file: %w", err)
	}
	pub, err := qlik.ParsePublicKeyPEM(raw)
	if err != nil {
		return qlik.JWK{}, fmt.Errorf("--public-key-file %s: %w", p.o.keys.publicKeyFile, err)
	}
	return qlik.PublicJWK(pub, p.o.keys.keyID, p.o.keys.keyAlg)
}

// storedKey is the private key in the Secret at --secret-out, as the
// broker will read it (kid from --key-id or the thumbprint); nil when there
// is none.
func (p *provisioner) storedKey() (*qlik.SigningKey, error) {
	raw := p.manifest.entry(keyEntry)
	if raw == "" {
		return nil, nil
	}
	// Named as the broker names it: by the tenants file's clientKeyId and
	// clientKeyAlg, else as this run would.
	kid, alg := p.o.keys.keyID, p.o.keys.keyAlg
	if i := slices.IndexFunc(p.registry.Tenants, func(e config.TenantEntry) bool { return e.ID == p.o.tenantID }); i >= 0 && p.registry.Tenants[i].ClientKeyFile != "" {
		kid, alg = p.registry.Tenants[i].ClientKeyID, p.registry.Tenants[i].ClientKeyAlg
	}
	k, err := qlik.ParseSigningKey([]byte(raw), kid, alg)
	if err != nil && alg != "" {
		k, err = qlik.ParseSigningKey([]byte(raw), kid, "") // rotated to another key type
	}
	if err != nil {
		return nil, fmt.Errorf("the %s in %s: %w", keyEntry, p.o.secretOut, err)
	}
	return k, nil
}

// createWithKey creates the client with its public key and stores the
// private key at once.
func (p *provisioner) createWithKey(ctx context.Context, c *qlik.OAuthClient) error {
	jwk, privPEM, err := p.newKeyPair()
	if err != nil {
		return err
	}
	req := qlik.OAuthClientCreate{
		AppType:            qlik.AppTypeWeb,
		ClientName:         p.o.clientName,
		Description:        "qlik-token-broker: user impersonation for tenant " + p.o.tenantID,
		AllowedScopes:      impersonationScopes,
		AllowedGrantTypes:  impersonationGrants,
		AllowedOrigins:     p.o.origins,
		RedirectURIs:       p.o.redirectURIs,
		AllowedAuthMethods: []string{methodPrivateKeyJWT},
		PublicKeys:         []qlik.JWK{jwk},
	}
	if p.o.dryRun {
		*c = qlik.OAuthClient{ClientID: plannedClientID, ClientName: p.o.clientName}
		p.act(fmt.Sprintf("create client %q with public key %s (%s)", p.o.clientName, jwk.KeyID, jwk.Algorithm), "")
		p.act("set consent trusted", "")
		return p.saveKey(privPEM)
	}
	created, err := p.api.admin.CreateOAuthClient(ctx, req)
	if err != nil {
		return fmt.Errorf("creating client %q: %w", p.o.clientName, explain(err))
	}
	*c = created
	p.act("", fmt.Sprintf("created client %q (id %s) with public key %s (%s)", c.ClientName, c.ClientID, jwk.KeyID, jwk.Algorithm))
	if err := p.saveKey(privPEM); err != nil {
		return fmt.Errorf("client %s was created but its key could not be saved (%w); run again with --rotate-key", c.ClientID, err)
	}
	return p.trust(ctx, c)
}

// reconcileKey checks an existing client for Private Key JWT: the auth
// method, the stored key registered, consent; with --fix it corrects them,
// with --rotate-key it adds a new key, with --finish it drops the others.
func (p *provisioner) reconcileKey(ctx context.Context, c *qlik.OAuthClient) error {
	if c.AppType != qlik.AppTypeWeb {
		return fmt.Errorf("client %q (id %s) is a %s client, which cannot use the impersonation grant and cannot change type: delete it or pass another --client-name",
			c.ClientName, c.ClientID, c.AppType)
	}
	stored, err := p.storedKey()
	if err != nil {
		return err
	}
	var ops []qlik.PatchOp
	var what []string
	ds := p.drifts(*c)
	if len(ds) > 0 && !p.o.fix {
		for _, d := range ds {
			p.problems = append(p.problems, d.String())
		}
	} else {
		for _, d := range ds {
			ops = append(ops, qlik.PatchOp{Op: "replace", Path: d.path, Value: append(slices.Clone(d.have), d.missing...)})
			what = append(what, strings.TrimPrefix(d.path, "/")+" += "+strings.Join(d.missing, ", "))
			if d.path == "/allowedAuthMethods" {
				c.AllowedAuthMethods = append(slices.Clone(d.have), d.missing...)
			}
		}
	}

	keys := slices.Clone(c.PublicKeys)
	registered := func(k qlik.JWK) bool {
		return slices.ContainsFunc(keys, func(r qlik.JWK) bool { return r.KeyID == k.KeyID && r.Thumbprint() == k.Thumbprint() })
	}
	var newPEM []byte
	switch {
	case p.o.keys.rotateKey || (stored == nil && p.o.fix):
		jwk, privPEM, err := p.newKeyPair()
		if err != nil {
			return err
		}
		if slices.ContainsFunc(keys, func(r qlik.JWK) bool { return r.KeyID == jwk.KeyID }) && !registered(jwk) {
			return fmt.Errorf("client %s already has another key with kid %s: pass another --key-id", c.ClientID, jwk.KeyID)
		}
		if !registered(jwk) {
			keys = append(keys, jwk)
			what = append(what, "publicKeys += "+jwk.KeyID)
		}
		newPEM = privPEM
		stored = nil
	case stored == nil:
		reason := p.o.secretOut + " does not exist"
		if p.manifest != nil {
			reason = p.o.secretOut + " holds no " + keyEntry
		}
		p.problems = append(p.problems, "client key unknown: "+reason+"; --fix or --rotate-key makes and registers a new one")
	case !registered(stored.PublicJWK()) && !p.o.fix:
		p.problems = append(p.problems, fmt.Sprintf("publicKeys lack %s, the key in %s", stored.KeyID(), p.o.secretOut))
	case !registered(stored.PublicJWK()):
		keys = append(keys, stored.PublicJWK())
		what = append(what, "publicKeys += "+stored.KeyID())
	}
	if p.o.keys.finish && stored != nil {
		keep := stored.PublicJWK()
		if len(keys) != 1 || !registered(keep) {
			var gone []string
			for _, k := range keys {
				if k.KeyID != keep.KeyID || k.Thumbprint() != keep.Thumbprint() {
					gone = append(gone, k.KeyID)
				}
			}
			keys = []qlik.JWK{keep}
			what = append(what, "publicKeys -= "+strings.Join(gone, ", "))
		}
		if slices.Contains(c.AllowedAuthMethods, methodClientSecret) {
			rest := slices.DeleteFunc(slices.Clone(c.AllowedAuthMethods), func(m string) bool { return m == methodClientSecret })
			ops = append(ops, qlik.PatchOp{Op: "replace", Path: "/allowedAuthMethods", Value: rest})
			what = append(what, "allowedAuthMethods -= client_secret")
		}
	}
	if !slices.Equal(keys, c.PublicKeys) {
		ops = append(ops, qlik.PatchOp{Op: "replace", Path: "/publicKeys", Value: keys})
	}

	if c.ConsentMethod == "" {
		m, err := p.api.admin.GetConsent(ctx, c.ClientID)
		if err != nil {
			return fmt.Errorf("reading consent of client %s: %w", c.ClientID, explain(err))
		}
		c.ConsentMethod = m
	}
	if c.ConsentMethod != qlik.ConsentTrusted && !p.o.fix {
		p.problems = append(p.problems, fmt.Sprintf("consent is %s, want trusted (impersonation fails until it is)", c.ConsentMethod))
	}
	if len(p.problems) > 0 { // report only: nothing changes while problems remain
		return nil
	}
	if len(ops) > 0 {
		msg := fmt.Sprintf("client %s: %s", c.ClientID, strings.Join(what, "; "))
		if !p.o.dryRun {
			if _, err := p.api.admin.UpdateOAuthClient(ctx, c.ClientID, ops); err != nil {
				return fmt.Errorf("updating client %s: %w", c.ClientID, explain(err))
			}
		}
		p.act("update "+msg, "updated "+msg)
		c.PublicKeys = keys
	}
	if c.ConsentMethod != qlik.ConsentTrusted {
		if err := p.trust(ctx, c); err != nil {
			return err
		}
	}
	// The public key is registered first: a broker that reads the new
	// private key early is never refused.
	if newPEM != nil {
		if err := p.saveKey(newPEM); err != nil {
			return fmt.Errorf("client %s has a new public key but its private key could not be saved (%w); run again with --rotate-key", c.ClientID, err)
		}
	} else if stored != nil {
		if err := p.saveKey([]byte(p.manifest.entry(keyEntry))); err != nil { // drops a stale client-secret, tightens the mode
			return err
		}
	}
	return nil
}

// saveKey stores the private key in the Secret manifest (which then holds
// no client secret). Nothing is written for a key given only as a public
// key file: its private half is the operator's to mount.
func (p *provisioner) saveKey(privPEM []byte) error {
	if privPEM == nil {
		p.act("", "the private key was not written: put it under "+keyEntry+" in Secret "+p.o.secretName)
		return nil
	}
	return p.saveManifest(p.manifest.withEntry(p.o.secretName, keyEntry, string(privPEM), secretKey))
}

// registryAuth points the tenant's entry at the credential this run keeps:
// the secret file, or the key file (kid and alg only when they differ from
// what the broker derives, so a rotated key file alone moves it to the new
// key).
func (p *provisioner) registryAuth(e *config.TenantEntry) {
	if !p.keyAuth() {
		e.ClientKeyFile, e.ClientKeyID, e.ClientKeyAlg = "", "", ""
		return
	}
	e.ClientSecretFile = ""
	e.ClientKeyFile = path.Join(p.o.secretMountDir, keyEntry)
	e.ClientKeyID = p.o.keys.keyID
	e.ClientKeyAlg = ""
	if p.o.keys.keyAlg == qlik.AlgRS512 {
		e.ClientKeyAlg = qlik.AlgRS512
	}
}

// entry returns the value under key, "" when there is none.
func (m *secretManifest) entry(key string) string {
	if m == nil {
		return ""
	}
	if v := m.StringData[key]; v != "" {
		return v
	}
	v, _ := base64.StdEncoding.DecodeString(m.Data[key])
	return string(v)
}

// withEntry returns a copy of m (or a new Secret) named name holding value
// under key and nothing under drop.
func (m *secretManifest) withEntry(name, key, value, drop string) *secretManifest {
	next := m.with(name, "")
	delete(next.StringData, secretKey)
	for _, k := range []string{key, drop} {
		delete(next.StringData, k)
		delete(next.Data, k)
	}
	if len(next.Data) == 0 {
		next.Data = nil
	}
	next.StringData[key] = value
	return next
}
