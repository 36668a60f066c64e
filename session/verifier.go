// Package session owns the security boundary of the broker: it verifies the
// OEM web app's session JWT against the configured key (HMAC secret, PEM
// public key or JWKS) with every configured check, and maps an accepted token
// to an Identity (Qlik user lookup, tenant). It also extracts tokens from
// requests and provides the echo middleware that does both.
//
// Anything Verify accepts was signed by a configured key with an allowed
// algorithm, has an exp, is inside its validity window (with Leeway), matches
// Issuer/Audience when set, has no crit header and carries a usable user
// claim (and tenant claim when configured). Keys come only from Config:
// the jku, x5u, jwk and x5c headers are ignored, never fetched.
package session

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"time"
	"unicode"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
)

// Identity is the verified session mapped to a Qlik user.
type Identity struct {
	Subject   string    // the token's sub (may be empty)
	UserField string    // LookupUserID, LookupSubject or LookupEmail
	UserValue string    // the Qlik user id or subject; never empty
	Tenant    string    // from Config.TenantClaim; "" when not configured
	List      []string  // from Config.ListClaim; nil when not configured or absent
	ExpiresAt time.Time // the session token's exp
	// Groups are the group names of Config.GroupsClaim, sorted and without
	// duplicates; HasGroups says the token carried the claim (an empty
	// list included). Without the claim there is nothing to sync.
	Groups    []string
	HasGroups bool
}

// Verifier verifies session tokens. It is safe for concurrent use.
type Verifier struct {
	cfg      Config
	algs     map[string]bool
	key      any // static key (HMAC secret or public key); nil for JWKS
	parser   *jwt.Parser
	jwks     *jwksSource // nil unless JWKS
	ctx      context.Context
	cancel   context.CancelFunc
	closeMu  sync.Once
	verified *verified // nil: every token is checked in full
}

// NewVerifier validates cfg and builds a Verifier.
//
// For a JWKS it fetches the key set once (waiting at most 5s) and starts the
// jwkset background refresh bound to ctx: cancelling ctx or calling Close stops
// it, so pass a long-lived context. A failed first fetch is not an error; Ready
// reports it until a key is loaded.
func NewVerifier(ctx context.Context, cfg Config) (*Verifier, error) {
	src, algs, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cfg.Algorithms = algs
	cfg.HMACSecret = bytes.Clone(cfg.HMACSecret)

	v := &Verifier{cfg: cfg, algs: make(map[string]bool, len(algs)), key: src.key,
		verified: newVerified(cfg.VerifiedCacheTTL, cfg.VerifiedCacheSize)}
	if src.kind == kindHMAC {
		v.key = cfg.HMACSecret
	}
	for _, a := range algs {
		v.algs[a] = true
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(algs),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(cfg.Now),
		jwt.WithStrictDecoding(),
		// Not jwt.WithJSONNumber: it switches to json.Decoder, which ignores
		// data after the claims object; json.Unmarshal rejects it.
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)

	v.ctx, v.cancel = context.WithCancel(ctx)
	if src.kind == kindJWKS {
		v.jwks, err = newJWKSSource(v.ctx, cfg)
		if err != nil {
			v.Close()
			return nil, err
		}
	}
	return v, nil
}

// Close stops the JWKS background refresh and releases idle connections. It is
// idempotent. After Close, tokens whose key is already loaded still verify,
// but no further JWKS fetch happens and Ready reports an error.
func (v *Verifier) Close() {
	v.closeMu.Do(func() {
		v.cancel()
		if v.jwks != nil {
			v.jwks.close()
		}
	})
}

// ErrNotReady is returned by Ready while no usable verification key is loaded.
var ErrNotReady = errors.New("session: no usable verification key loaded")

// Ready returns nil once a verification key is available: always for an HMAC
// secret or PEM key; for a JWKS when at least one loaded key fits an allowed
// algorithm. While none is, Ready itself retries the JWKS fetch, at most once
// per JWKSUnknownKIDMinWait (by Config.Now) and waiting at most 2s.
func (v *Verifier) Ready(ctx context.Context) error {
	if v.jwks == nil {
		return nil
	}
	if v.ctx.Err() != nil {
		return errors.Join(ErrNotReady, errClosed)
	}
	return v.jwks.ready(ctx, v.ctx, v.algs, v.cfg.Now)
}

// MaxTokenBytes is the effective token size limit (Config.MaxTokenBytes or
// its default), for callers that extract tokens themselves.
func (v *Verifier) MaxTokenBytes() int { return v.cfg.MaxTokenBytes }

// Verify checks rawToken and returns the Identity it carries. Every failure is
// an *Error whose Reason says why.
//
// Claims are decoded with encoding/json into a map: when a JSON object repeats
// a name (in the header or the claims), the last occurrence wins. The
// signature covers the exact bytes, so this only matters for tokens the
// configured key signed; it is pinned by a test.
func (v *Verifier) Verify(ctx context.Context, rawToken string) (Identity, error) {
	// Cheap checks first (CVE-2025-30204: bound the input before parsing).
	if rawToken == "" {
		return Identity{}, reject(ReasonMissing, errNoToken)
	}
	if len(rawToken) > v.cfg.MaxTokenBytes {
		return Identity{}, reject(ReasonTooLarge, errTokenTooLarge)
	}
	if strings.Count(rawToken, ".") != 2 {
		return Identity{}, reject(ReasonMalformed, errSegments)
	}
	var sum [sha256.Size]byte
	if v.verified != nil {
		// Hash the string's bytes in place: []byte(rawToken) would copy
		// the token on every request (SHA-256 only reads its input).
		sum = sha256.Sum256(unsafe.Slice(unsafe.StringData(rawToken), len(rawToken)))
		if id, ok := v.verified.get(sum, v.cfg.Now()); ok {
			return id, nil
		}
	}
	id, err := v.verify(ctx, rawToken)
	if err == nil && v.verified != nil {
		v.verified.put(sum, id, v.cfg.Now(), v.cfg.Leeway)
	}
	return id, err
}

// claimsPool recycles the claims maps of verify: decoding into a map that
// has already grown saves its allocations. Nothing verify returns refers to
// the map (an Identity holds the claim strings, never the map), and maps
// that grew large are left to the GC rather than kept.
var claimsPool = sync.Pool{New: func() any { return jwt.MapClaims{} }}

// maxPooledClaims bounds the size of a claims map kept in claimsPool.
const maxPooledClaims = 32

// verify checks a token in full.
func (v *Verifier) verify(ctx context.Context, rawToken string) (Identity, error) {
	claims := claimsPool.Get().(jwt.MapClaims)
	defer func() {
		if len(claims) <= maxPooledClaims {
			clear(claims)
			claimsPool.Put(claims)
		}
	}()
	token, err := v.parser.ParseWithClaims(rawToken, claims, v.keyfunc(ctx))
	if err != nil {
		// Any error means reject (CVE-2024-51744); the reason is a label.
		return Identity{}, v.rejection(rawToken, token, claims, err)
	}
	if token == nil || !token.Valid {
		return Identity{}, reject(ReasonInvalid, errNotValid)
	}
	return v.identity(claims)
}

// rejection labels a token jwt refused. Faults of the header come first,
// whatever jwt stumbled on: jwt decodes the header before anything else but
// then goes on to the claims, and reports an alg outside WithValidMethods as
// a bad signature. Looking at the header jwt decoded only after it failed
// costs a valid token nothing.
func (v *Verifier) rejection(rawToken string, token *jwt.Token, claims jwt.MapClaims, err error) error {
	switch {
	case token == nil: // jwt could not split it (not expected: Verify counted the dots)
		return reject(ReasonMalformed, err)
	case token.Header == nil: // not canonical base64url, or not a JSON object (null included)
		seg, _, _ := strings.Cut(rawToken, ".")
		return reject(ReasonMalformed, headerError(seg))
	}
	if herr := v.checkHeader(token.Header); herr != nil {
		return herr
	}
	return reject(v.classify(err, claims), err)
}

// headerError says which of the two ways a header segment that jwt could
// not decode into an object went wrong.
func headerError(seg string) error {
	if _, err := base64.RawURLEncoding.Strict().DecodeString(seg); err != nil {
		return errHeaderEncoding
	}
	return errHeaderJSON
}

// checkHeader enforces the alg allow-list and refuses crit: we implement no
// extension, and RFC 7515 §4.1.11 requires rejecting what we don't understand.
func (v *Verifier) checkHeader(h map[string]any) error {
	alg, ok := h["alg"].(string)
	if !ok || !v.algs[alg] {
		return reject(ReasonAlgorithm, errAlgNotAllowed)
	}
	if _, ok := h["crit"]; ok {
		return reject(ReasonCritical, errCritHeader)
	}
	return nil
}

// keyfunc returns the key for a token only when the token's alg fits the
// key's type. It never looks at jku, x5u, jwk or x5c. It checks the header
// before anything else, so that a token with crit gets no key (and no JWKS
// fetch).
func (v *Verifier) keyfunc(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		if t.Method == nil {
			return nil, reject(ReasonAlgorithm, errAlgNotAllowed)
		}
		if err := v.checkHeader(t.Header); err != nil {
			return nil, err
		}
		alg := t.Method.Alg()
		if v.jwks != nil {
			return v.jwks.key(ctx, v.ctx, t, alg)
		}
		if !keyFitsAlg(v.key, alg) {
			return nil, reject(ReasonUnknownKey, errKeyAlgMismatch)
		}
		return v.key, nil
	}
}

// keyFitsAlg reports whether key may verify alg: the algorithm-confusion
// defence, applied to every key including JWKS ones.
func keyFitsAlg(key any, alg string) bool {
	switch k := key.(type) {
	case []byte:
		return strings.HasPrefix(alg, "HS") && len(k) >= MinHMACSecretBytes
	case *rsa.PublicKey:
		return (strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")) && checkPublicKey(k) == nil
	case *ecdsa.PublicKey:
		switch publicKeyKind(k) {
		case kindP256:
			return alg == "ES256"
		case kindP384:
			return alg == "ES384"
		case kindP521:
			return alg == "ES512"
		}
	case ed25519.PublicKey:
		return alg == "EdDSA" && len(k) == ed25519.PublicKeySize
	}
	return false
}

// classify maps a jwt error to a Reason. It is only a label: the token has
// already been rejected. The claims it inspects are reached only after the
// signature verified (jwt validates claims last).
func (v *Verifier) classify(err error, claims jwt.MapClaims) Reason {
	var se *Error
	if errors.As(err, &se) {
		return se.Reason
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ReasonMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonSignature
	case !errors.Is(err, jwt.ErrTokenInvalidClaims):
		return ReasonInvalid
	}
	// A missing or mistyped iss/aud is reported by jwt as a missing claim or
	// an invalid type, so look at the claims to name it.
	switch {
	case !hasNumber(claims, "exp"):
		return ReasonMissingExpiry
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), v.cfg.Issuer != "" && !hasString(claims, "iss"):
		return ReasonIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience), v.cfg.Audience != "" && !hasAudience(claims):
		return ReasonAudience
	}
	return ReasonInvalid
}

func hasAudience(claims jwt.MapClaims) bool {
	aud, err := claims.GetAudience()
	return err == nil && len(aud) > 0 && !(len(aud) == 1 && aud[0] == "")
}

func hasNumber(claims jwt.MapClaims, name string) bool {
	f, ok := claims[name].(float64)
	return ok && f != 0
}

func hasString(claims jwt.MapClaims, name string) bool {
	s, ok := claims[name].(string)
	return ok && s != ""
}

// identity maps verified claims to an Identity.
func (v *Verifier) identity(claims jwt.MapClaims) (Identity, error) {
	user, ok := claimString(claims, v.cfg.UserClaim)
	if !ok {
		return Identity{}, reject(ReasonUserClaim, errClaim)
	}
	var tenant string
	if v.cfg.TenantClaim != "" {
		if tenant, ok = claimString(claims, v.cfg.TenantClaim); !ok {
			return Identity{}, reject(ReasonTenantClaim, errClaim)
		}
	}
	sub, err := claims.GetSubject()
	if err != nil {
		return Identity{}, reject(ReasonInvalid, errSubject)
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return Identity{}, reject(ReasonMissingExpiry, err)
	}
	id := Identity{
		Subject:   sub,
		UserField: v.cfg.UserLookup,
		UserValue: user,
		Tenant:    tenant,
		List:      claimList(claims, v.cfg.ListClaim),
		ExpiresAt: exp.Time,
	}
	if v.cfg.GroupsClaim != nil {
		if name := v.cfg.GroupsClaim(tenant); name != "" {
			if id.Groups, id.HasGroups, err = claimGroups(claims, name, v.cfg.MaxGroups); err != nil {
				return Identity{}, reject(ReasonGroupsClaim, err)
			}
		}
	}
	return id, nil
}

// claimList reads a list claim: an array of strings, or one string of
// space-separated words (as OAuth's scope). Anything else is an empty list.
func claimList(claims jwt.MapClaims, name string) []string {
	if name == "" {
		return nil
	}
	switch v := claims[name].(type) {
	case string:
		return strings.Fields(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok && s != "" && !strings.ContainsFunc(s, unicode.IsControl) {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// claimString returns a claim that is a JSON string with visible content.
// Blank values and control characters are refused: the value ends up in a
// Qlik user lookup, cache keys and logs.
func claimString(claims jwt.MapClaims, name string) (string, bool) {
	s, ok := claims[name].(string)
	if !ok || strings.TrimSpace(s) == "" {
		return "", false
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return "", false
	}
	return s, true
}
