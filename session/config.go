package session

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Lookup fields: how Qlik finds the user to impersonate (user_lookup.field).
const (
	LookupUserID  = "userId"
	LookupSubject = "subject"
	// LookupEmail names the user by email; the broker resolves it to a
	// user id through the tenant's users API.
	LookupEmail = "email"
)

// Defaults and bounds applied by NewVerifier and checked by Config.Validate.
const (
	DefaultMaxTokenBytes         = 8192
	DefaultUserClaim             = "sub"
	DefaultJWKSRefreshInterval   = 5 * time.Minute
	DefaultJWKSUnknownKIDMinWait = 30 * time.Second
	// DefaultMaxGroups is the most entries a groups claim may have.
	DefaultMaxGroups = 100
	// MaxGroupNameChars is the longest group name Qlik accepts, in
	// characters.
	MaxGroupNameChars = 256

	// MinHMACSecretBytes is the shortest accepted HMAC secret (RFC 7518 §3.2 for HS256).
	MinHMACSecretBytes = 32
	// MinRSABits is the smallest accepted RSA modulus, for PEM and JWKS keys alike.
	MinRSABits = 2048

	maxTokenBytesLimit = 1 << 20
	maxLeeway          = 10 * time.Minute
	minJWKSInterval    = time.Second
	maxJWKSRefresh     = 24 * time.Hour
	maxJWKSMinWait     = time.Hour
	// jwksHTTPTimeout bounds every JWKS fetch, including the first one that
	// NewVerifier waits for.
	jwksHTTPTimeout = 5 * time.Second
	// jwksWaitMax bounds how long a Verify or Ready call waits for a
	// refresh triggered by an unknown kid (rate-limiter wait plus fetch).
	jwksWaitMax = 2 * time.Second
	// jwksMaxBodyBytes caps a JWKS response.
	jwksMaxBodyBytes = 1 << 20
)

// ErrInvalidConfig is wrapped by every problem Config.Validate reports.
var ErrInvalidConfig = errors.New("session: invalid config")

// Config configures a Verifier. Exactly one of HMACSecret, PublicKeyPEM and
// JWKSURL names the key that session tokens must be signed with.
//
// Config's String, GoString, LogValue and MarshalJSON redact HMACSecret.
type Config struct {
	// HMACSecret is the shared secret for HS256/384/512; at least 32 bytes.
	HMACSecret []byte
	// PublicKeyPEM holds the verification key: a PKIX "PUBLIC KEY" (RSA,
	// ECDSA P-256/384/521 or Ed25519), a PKCS#1 "RSA PUBLIC KEY" or a
	// "CERTIFICATE" (only its key is used: validity dates and chain are not
	// checked). The first usable block wins; other block types are skipped.
	PublicKeyPEM []byte
	// JWKSURL is fetched for keys: https, or http for loopback hosts only.
	JWKSURL string
	// Algorithms is the alg allow-list. Empty means the defaults for the key
	// type: HS256/384/512 for HMACSecret; RS*, PS* for RSA; the single ES
	// algorithm of an EC key's curve; EdDSA for Ed25519; every RS*, PS*,
	// ES* and EdDSA for JWKS. Algorithms that do not fit the key type are a
	// config error (algorithm-confusion defence).
	Algorithms []string
	// Issuer, when set, must equal the token's iss.
	Issuer string
	// Audience, when set, must be one of the token's aud values.
	Audience string
	// Leeway is the clock-skew allowance for exp, nbf and iat (0 to 10m).
	Leeway time.Duration
	// UserClaim names the claim holding the Qlik user; default "sub".
	UserClaim string
	// UserLookup is LookupUserID (default), LookupSubject or LookupEmail.
	UserLookup string
	// TenantClaim optionally names a claim holding the tenant; when set,
	// every token must carry it as a non-empty string.
	TenantClaim string
	// ListClaim optionally names a claim holding a list of strings (a JSON
	// array, or one space-separated string), returned as Identity.List.
	// Service credentials use it for the tenants they may act in.
	ListClaim string
	// GroupsClaim, when set, names the claim holding the session's group
	// names for a tenant (the tenant claim's value; "" without one), or
	// "" for none. The claim must be a JSON array of at most MaxGroups
	// non-empty strings of at most MaxGroupNameChars characters; anything
	// else rejects the token (ReasonGroupsClaim). It is called per token
	// verified in full, so a reload of the tenants is seen by tokens not
	// yet remembered (VerifiedCacheTTL).
	GroupsClaim func(tenant string) string
	// MaxGroups bounds the groups claim's entries; default
	// DefaultMaxGroups.
	MaxGroups int
	// MaxTokenBytes caps the token length, checked before any parsing;
	// default 8192.
	MaxTokenBytes int
	// Now is the clock for exp/nbf/iat and for pacing readiness-driven JWKS
	// fetches; default time.Now.
	Now func() time.Time
	// HTTPClient fetches the JWKS. Default: 5s timeout, no redirects, own
	// transport. A caller-supplied client is used as given (its redirect
	// policy included), with the response size capped at 1 MiB.
	HTTPClient *http.Client
	// JWKSRefreshInterval is the background refresh period; default 5m.
	JWKSRefreshInterval time.Duration
	// JWKSUnknownKIDMinWait is the minimum interval between JWKS fetches
	// triggered by an unknown kid (and between fetches Ready triggers while
	// no key is loaded); default 30s, 1s to 1h. A request never waits more
	// than 2s for such a fetch.
	JWKSUnknownKIDMinWait time.Duration
	// Logger receives JWKS refresh failures; tokens are never logged.
	Logger *slog.Logger
	// VerifiedCacheTTL, when positive, remembers tokens that verified (by
	// their SHA-256) for up to this long, never past their exp plus Leeway,
	// so repeated requests skip signature checks. Zero turns it off. A key
	// removed from a JWKS still accepts tokens already seen until then.
	VerifiedCacheTTL time.Duration
	// VerifiedCacheSize bounds the remembered tokens; default 10,000.
	VerifiedCacheSize int
}

// Validate reports every problem in c at once (joined with errors.Join),
// each wrapping ErrInvalidConfig and naming the field. Secret values are never
// included.
func (c Config) Validate() error {
	_, _, err := c.resolve()
	return err
}

// keySource is the resolved verification key of a Config.
type keySource struct {
	kind keyKind
	key  any // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey; nil for JWKS
}

// resolve validates c and returns its key and allow-list.
func (c Config) resolve() (keySource, []string, error) {
	src, algs, problems := c.check()
	if len(problems) > 0 {
		errs := make([]error, len(problems))
		for i, p := range problems {
			errs[i] = p
		}
		return keySource{}, nil, errors.Join(errs...)
	}
	return src, algs, nil
}

// check returns c's key and allow-list, and every problem, each naming
// its field.
func (c Config) check() (keySource, []string, []*ConfigError) {
	var errs []*ConfigError
	// problem records a problem of field; sep joins the field's name and
	// the problem in the message (" " or ": ").
	problem := func(field, sep, format string, args ...any) {
		p := fmt.Sprintf(format, args...)
		text := p
		if field != "" {
			text = field + sep + p
		}
		errs = append(errs, &ConfigError{Field: field, Problem: p, text: text})
	}

	var src keySource
	sources := 0
	if len(c.HMACSecret) > 0 {
		sources++
		src = keySource{kind: kindHMAC, key: c.HMACSecret}
		if len(c.HMACSecret) < MinHMACSecretBytes {
			problem("HMACSecret", " ", "must be at least %d bytes", MinHMACSecretBytes)
		}
	}
	if len(c.PublicKeyPEM) > 0 {
		sources++
		key, err := parsePublicKeyPEM(c.PublicKeyPEM)
		if err != nil {
			problem("PublicKeyPEM", ": ", "%v", err)
		} else {
			src = keySource{kind: publicKeyKind(key), key: key}
		}
	}
	if c.JWKSURL != "" {
		sources++
		src = keySource{kind: kindJWKS}
		if err := checkJWKSURL(c.JWKSURL); err != nil {
			problem("JWKSURL", ": ", "%v", err)
		}
	}
	if sources != 1 {
		problem("", "", "exactly one of HMACSecret, PublicKeyPEM and JWKSURL must be set (%d are)", sources)
		src = keySource{}
	}

	algs := slices.Clone(c.Algorithms)
	if len(algs) == 0 && src.kind != 0 {
		algs = defaultAlgorithms(src.kind)
	}
	for _, a := range c.Algorithms {
		switch {
		case !slices.Contains(allAlgorithms, a):
			problem("Algorithms", ": ", "unknown or unsupported algorithm %q", a)
		case src.kind != 0 && !slices.Contains(defaultAlgorithms(src.kind), a):
			problem("Algorithms", ": ", "%q cannot be used with %s", a, src.kind)
		}
	}

	if c.Leeway < 0 || c.Leeway > maxLeeway {
		problem("Leeway", " ", "must be between 0 and %s", maxLeeway)
	}
	if c.MaxTokenBytes < 0 || c.MaxTokenBytes > maxTokenBytesLimit {
		problem("MaxTokenBytes", " ", "must be between 0 (default %d) and %d", DefaultMaxTokenBytes, maxTokenBytesLimit)
	}
	switch c.UserLookup {
	case "", LookupUserID, LookupSubject, LookupEmail:
	default:
		problem("UserLookup", " ", "must be %q, %q or %q", LookupUserID, LookupSubject, LookupEmail)
	}
	if c.UserClaim != "" && strings.TrimSpace(c.UserClaim) != c.UserClaim {
		problem("UserClaim", " ", "has leading or trailing spaces")
	}
	if c.TenantClaim != "" && strings.TrimSpace(c.TenantClaim) != c.TenantClaim {
		problem("TenantClaim", " ", "has leading or trailing spaces")
	}
	if c.MaxGroups < 0 {
		problem("MaxGroups", " ", "must not be negative (0: default %d)", DefaultMaxGroups)
	}
	if d := c.JWKSRefreshInterval; d != 0 && (d < minJWKSInterval || d > maxJWKSRefresh) {
		problem("JWKSRefreshInterval", " ", "must be 0 (default %s) or between %s and %s", DefaultJWKSRefreshInterval, minJWKSInterval, maxJWKSRefresh)
	}
	if d := c.JWKSUnknownKIDMinWait; d != 0 && (d < minJWKSInterval || d > maxJWKSMinWait) {
		problem("JWKSUnknownKIDMinWait", " ", "must be 0 (default %s) or between %s and %s", DefaultJWKSUnknownKIDMinWait, minJWKSInterval, maxJWKSMinWait)
	}
	if len(errs) > 0 {
		return keySource{}, nil, errs
	}
	return src, algs, nil
}

// withDefaults returns c with every zero field that has a default filled in.
func (c Config) withDefaults() Config {
	if c.MaxTokenBytes == 0 {
		c.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if c.MaxGroups == 0 {
		c.MaxGroups = DefaultMaxGroups
	}
	if c.UserClaim == "" {
		c.UserClaim = DefaultUserClaim
	}
	if c.UserLookup == "" {
		c.UserLookup = LookupUserID
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.JWKSRefreshInterval == 0 {
		c.JWKSRefreshInterval = DefaultJWKSRefreshInterval
	}
	if c.JWKSUnknownKIDMinWait == 0 {
		c.JWKSUnknownKIDMinWait = DefaultJWKSUnknownKIDMinWait
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// keyKind is the family of the configured key; it decides which algorithms
// may be used with it.
type keyKind int

const (
	kindHMAC keyKind = iota + 1
	kindRSA
	kindP256
	kindP384
	kindP521
	kindEd25519
	kindJWKS
)

func (k keyKind) String() string {
	switch k {
	case kindHMAC:
		return "an HMAC secret"
	case kindRSA:
		return "an RSA key"
	case kindP256:
		return "an ECDSA P-256 key"
	case kindP384:
		return "an ECDSA P-384 key"
	case kindP521:
		return "an ECDSA P-521 key"
	case kindEd25519:
		return "an Ed25519 key"
	case kindJWKS:
		return "a JWKS"
	}
	return "no key"
}

var (
	hmacAlgorithms = []string{"HS256", "HS384", "HS512"}
	rsaAlgorithms  = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	jwksAlgorithms = append(slices.Clone(rsaAlgorithms), "ES256", "ES384", "ES512", "EdDSA")
	allAlgorithms  = append(slices.Clone(hmacAlgorithms), jwksAlgorithms...)
)

// defaultAlgorithms is also the set of algorithms compatible with kind.
func defaultAlgorithms(kind keyKind) []string {
	switch kind {
	case kindHMAC:
		return slices.Clone(hmacAlgorithms)
	case kindRSA:
		return slices.Clone(rsaAlgorithms)
	case kindP256:
		return []string{"ES256"}
	case kindP384:
		return []string{"ES384"}
	case kindP521:
		return []string{"ES512"}
	case kindEd25519:
		return []string{"EdDSA"}
	case kindJWKS:
		return slices.Clone(jwksAlgorithms)
	}
	return nil
}

// publicKeyKind classifies a key accepted by checkPublicKey.
func publicKeyKind(key any) keyKind {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return kindRSA
	case *ecdsa.PublicKey:
		switch k.Curve.Params().Name {
		case "P-256":
			return kindP256
		case "P-384":
			return kindP384
		case "P-521":
			return kindP521
		}
	case ed25519.PublicKey:
		return kindEd25519
	}
	return 0
}

// checkPublicKey accepts only key types and sizes we verify with.
func checkPublicKey(key any) error {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N == nil || k.N.BitLen() < MinRSABits {
			return fmt.Errorf("RSA key is shorter than %d bits", MinRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		if publicKeyKind(k) == 0 {
			return errors.New("ECDSA curve is not P-256, P-384 or P-521")
		}
		return nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("Ed25519 key has the wrong size")
		}
		return nil
	}
	return fmt.Errorf("unsupported public key type %T", key)
}

// parsePublicKeyPEM returns the first usable public key in data.
func parsePublicKeyPEM(data []byte) (any, error) {
	var firstErr error
	blocks := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			continue
		}
		blocks++
		if err == nil {
			err = checkPublicKey(key)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("%s block: %w", block.Type, err)
			}
			continue
		}
		return key, nil
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if blocks == 0 {
		return nil, errors.New(`no "PUBLIC KEY", "RSA PUBLIC KEY" or "CERTIFICATE" PEM block`)
	}
	return nil, errors.New("no usable key")
}

// checkJWKSURL requires an absolute https URL, or http on a loopback host,
// without credentials.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a valid URL")
	}
	if u.User != nil {
		return errors.New("must not contain credentials")
	}
	host := u.Hostname()
	if host == "" {
		return errors.New("has no host")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(host) {
			return nil
		}
		return errors.New("http is allowed only for loopback hosts; use https")
	}
	return errors.New("scheme must be https")
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// redacted is what Config's String, LogValue and MarshalJSON show.
type redacted struct {
	HMACSecret            string   `json:"hmacSecret,omitempty"`
	PublicKeyPEM          bool     `json:"publicKeyPEM,omitempty"`
	JWKSURL               string   `json:"jwksURL,omitempty"`
	Algorithms            []string `json:"algorithms,omitempty"`
	Issuer                string   `json:"issuer,omitempty"`
	Audience              string   `json:"audience,omitempty"`
	Leeway                string   `json:"leeway"`
	UserClaim             string   `json:"userClaim,omitempty"`
	UserLookup            string   `json:"userLookup,omitempty"`
	TenantClaim           string   `json:"tenantClaim,omitempty"`
	MaxTokenBytes         int      `json:"maxTokenBytes,omitempty"`
	JWKSRefreshInterval   string   `json:"jwksRefreshInterval"`
	JWKSUnknownKIDMinWait string   `json:"jwksUnknownKIDMinWait"`
}

func (c Config) redacted() redacted {
	r := redacted{
		PublicKeyPEM:          len(c.PublicKeyPEM) > 0,
		Algorithms:            c.Algorithms,
		Issuer:                c.Issuer,
		Audience:              c.Audience,
		Leeway:                c.Leeway.String(),
		UserClaim:             c.UserClaim,
		UserLookup:            c.UserLookup,
		TenantClaim:           c.TenantClaim,
		MaxTokenBytes:         c.MaxTokenBytes,
		JWKSRefreshInterval:   c.JWKSRefreshInterval.String(),
		JWKSUnknownKIDMinWait: c.JWKSUnknownKIDMinWait.String(),
	}
	if len(c.HMACSecret) > 0 {
		r.HMACSecret = "[REDACTED]"
	}
	if u, err := url.Parse(c.JWKSURL); err == nil {
		r.JWKSURL = u.Redacted()
	} else if c.JWKSURL != "" {
		r.JWKSURL = "[unparsable]"
	}
	return r
}

// String describes c with HMACSecret redacted.
func (c Config) String() string {
	return fmt.Sprintf("session.Config%+v", c.redacted())
}

// GoString is String, so that %#v does not print the secret either.
func (c Config) GoString() string { return c.String() }

// LogValue implements slog.LogValuer with HMACSecret redacted.
func (c Config) LogValue() slog.Value {
	r := c.redacted()
	return slog.GroupValue(
		slog.String("hmacSecret", r.HMACSecret),
		slog.Bool("publicKeyPEM", r.PublicKeyPEM),
		slog.String("jwksURL", r.JWKSURL),
		slog.Any("algorithms", r.Algorithms),
		slog.String("issuer", r.Issuer),
		slog.String("audience", r.Audience),
		slog.String("leeway", r.Leeway),
		slog.String("userClaim", r.UserClaim),
		slog.String("userLookup", r.UserLookup),
		slog.String("tenantClaim", r.TenantClaim),
		slog.Int("maxTokenBytes", r.MaxTokenBytes),
	)
}

// MarshalJSON encodes c with HMACSecret redacted.
func (c Config) MarshalJSON() ([]byte, error) {
	return json.Marshal(c.redacted())
}
