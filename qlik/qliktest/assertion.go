package qliktest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Private Key JWT client authentication (contract §8), verified with the
// standard library only, so the fake shares no JWT code with the client it
// tests.

const (
	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	maxAssertionLife    = 300 * time.Second
	assertionSkew       = 60 * time.Second // iat may be this far ahead of the tenant's clock
	maxAssertionBytes   = 16 << 10
)

// Reasons an assertion is refused, as AssertionRefusals reports them. They
// follow the tutorial's messages where it names one.
const (
	RefusedAssertionType = "unsupported_client_assertion_type"
	RefusedMalformed     = "malformed assertion"
	RefusedClient        = "Invalid client or unauthorized_client"
	RefusedKey           = "Signature validation failed: no registered key with this kid"
	RefusedAlg           = "Signature validation failed: alg does not match the key"
	RefusedSignature     = "Signature validation failed"
	RefusedAudience      = "Invalid audience"
	RefusedLifetime      = "exp - iat exceeds 300 seconds"
	RefusedExpired       = "assertion expired"
	RefusedNotYet        = "iat or nbf in the future"
	RefusedReplay        = "jti already used"
	RefusedBoth          = "client_secret and client_assertion both sent"
)

// assertionState is what the tenant remembers of assertions.
type assertionState struct {
	seen     map[string]time.Time // jti -> exp, pruned once expired
	keyUses  map[string]int       // kid -> accepted assertions
	refusals []string
}

// requestTokenURL is the token endpoint at the origin r was posted to: the
// aud an assertion must name.
func requestTokenURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + "/oauth/token"
}

// authenticateRequestLocked authenticates the client of a token or revoke
// request by its secret or, when it sends one, its assertion.
func (t *Tenant) authenticateRequestLocked(req oauthRequest, now time.Time) (*clientRecord, bool) {
	if req.ClientAssertion == "" && req.ClientAssertionType == "" {
		return t.authenticateLocked(req.ClientID, req.ClientSecret)
	}
	rec, reason := t.verifyAssertionLocked(req, now)
	if reason != "" {
		t.assertions.refusals = append(t.assertions.refusals, reason)
		return nil, false
	}
	return rec, true
}

// verifyAssertionLocked checks the assertion of req and returns its
// client, or why it is refused.
func (t *Tenant) verifyAssertionLocked(req oauthRequest, now time.Time) (*clientRecord, string) {
	if req.ClientSecret != "" {
		return nil, RefusedBoth
	}
	if req.ClientAssertionType != clientAssertionType {
		return nil, RefusedAssertionType
	}
	rec, ok := t.clients[req.ClientID]
	if !ok || req.ClientID == "" || !slices.Contains(rec.AllowedAuthMethods, authPrivateKeyJWT) {
		return nil, RefusedClient
	}
	if len(req.ClientAssertion) > maxAssertionBytes {
		return nil, RefusedMalformed
	}
	parts := strings.Split(req.ClientAssertion, ".")
	if len(parts) != 3 {
		return nil, RefusedMalformed
	}
	var header struct {
		Alg  string   `json:"alg"`
		Kid  string   `json:"kid"`
		Crit []string `json:"crit"`
	}
	var claims map[string]any
	sig, errSig := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if !decodeSegment(parts[0], &header) || !decodeSegment(parts[1], &claims) || errSig != nil || header.Crit != nil {
		return nil, RefusedMalformed
	}
	jwk, found := findKey(rec.publicKeys, header.Kid)
	if header.Kid == "" || !found {
		return nil, RefusedKey
	}
	if header.Alg != jwk.Alg {
		return nil, RefusedAlg
	}
	if !verifySignature(jwk, []byte(parts[0]+"."+parts[1]), sig) {
		return nil, RefusedSignature
	}

	iss, _ := claims["iss"].(string)
	sub, _ := claims["sub"].(string)
	if iss != req.ClientID || sub != req.ClientID {
		return nil, RefusedClient
	}
	if aud, _ := claims["aud"].(string); aud != req.TokenURL {
		return nil, RefusedAudience // an array, a trailing slash or another host
	}
	iat, okIat := seconds(claims["iat"])
	exp, okExp := seconds(claims["exp"])
	jti, _ := claims["jti"].(string)
	switch {
	case !okIat || !okExp || jti == "":
		return nil, RefusedMalformed
	case exp.Sub(iat) > maxAssertionLife:
		return nil, RefusedLifetime
	case !now.Before(exp):
		return nil, RefusedExpired
	case iat.After(now.Add(assertionSkew)):
		return nil, RefusedNotYet
	}
	if nbf, ok := seconds(claims["nbf"]); claims["nbf"] != nil && (!ok || nbf.After(now.Add(assertionSkew))) {
		return nil, RefusedNotYet
	}
	if t.assertions.seen == nil {
		t.assertions.seen = map[string]time.Time{}
		t.assertions.keyUses = map[string]int{}
	}
	for k, e := range t.assertions.seen {
		if !now.Before(e) {
			delete(t.assertions.seen, k)
		}
	}
	if _, replay := t.assertions.seen[jti]; replay {
		return nil, RefusedReplay
	}
	t.assertions.seen[jti] = exp
	t.assertions.keyUses[header.Kid]++
	return rec, ""
}

// decodeSegment decodes one base64url JSON segment of a JWT into v.
func decodeSegment(seg string, v any) bool {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(seg)
	return err == nil && json.Unmarshal(raw, v) == nil
}

// seconds reads a NumericDate.
func seconds(v any) (time.Time, bool) {
	f, ok := v.(float64)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

// publicJWK is a registered key as the contract describes it.
type publicJWK struct {
	Kid string `json:"kid"`
	Kty string `json:"kty"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// findKey returns the registered key named kid.
func findKey(raw json.RawMessage, kid string) (publicJWK, bool) {
	var keys []publicJWK
	if json.Unmarshal(raw, &keys) != nil {
		return publicJWK{}, false
	}
	for _, k := range keys {
		if k.Kid == kid {
			return k, true
		}
	}
	return publicJWK{}, false
}

// verifySignature checks sig over signed with k, which must be a usable
// key of its algorithm: RS256 or RS512 with RSA of 2048 bits or more, or
// ES384 on P-384.
func verifySignature(k publicJWK, signed, sig []byte) bool {
	if k.Use != "sig" {
		return false
	}
	b64 := base64.RawURLEncoding.Strict()
	switch {
	case k.Kty == "RSA" && (k.Alg == "RS256" || k.Alg == "RS512"):
		n, errN := b64.DecodeString(k.N)
		e, errE := b64.DecodeString(k.E)
		if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
			return false
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if pub.N.BitLen() < 2048 {
			return false
		}
		if k.Alg == "RS256" {
			sum := sha256.Sum256(signed)
			return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) == nil
		}
		sum := sha512.Sum512(signed)
		return rsa.VerifyPKCS1v15(pub, crypto.SHA512, sum[:], sig) == nil
	case k.Kty == "EC" && k.Alg == "ES384" && k.Crv == "P-384":
		x, errX := b64.DecodeString(k.X)
		y, errY := b64.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != 48 || len(y) != 48 || len(sig) != 96 {
			return false
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return false
		}
		sum := sha512.Sum384(signed)
		r, s := new(big.Int).SetBytes(sig[:48]), new(big.Int).SetBytes(sig[48:])
		return ecdsa.Verify(pub, sum[:], r, s)
	}
	return false
}

// checkPublicKeys accepts an array of JWK objects with distinct kids. It is
// lenient, as create and PATCH are: a key the fake cannot use is refused
// when an assertion names it, not when it is registered.
func checkPublicKeys(raw json.RawMessage) *apiError {
	var keys []map[string]any
	if json.Unmarshal(raw, &keys) != nil {
		return adminError(http.StatusBadRequest, "publicKeys must be an array of JWK objects.")
	}
	seen := map[any]bool{}
	for _, k := range keys {
		if kid, ok := k["kid"]; ok {
			if seen[kid] {
				return adminError(http.StatusBadRequest, "publicKeys must not repeat a kid.")
			}
			seen[kid] = true
		}
	}
	return nil
}

// SetPublicKeys replaces the public keys of clientID (a JSON array of
// JWKs), as PATCH replace /publicKeys would. Unknown clients are ignored.
func (t *Tenant) SetPublicKeys(clientID string, keys json.RawMessage) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec, ok := t.clients[clientID]; ok {
		rec.publicKeys = slices.Clone(keys)
	}
}

// AssertionKeyUses is how many client assertions signed with kid the
// tenant accepted.
func (t *Tenant) AssertionKeyUses(kid string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.assertions.keyUses[kid]
}

// AssertionRefusals lists why assertions were refused, oldest first (the
// Refused* reasons); the answer itself is the tenant's invalid-client
// error, which does not say.
func (t *Tenant) AssertionRefusals() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.assertions.refusals)
}
