package qlik

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Private Key JWT client authentication (shared/qlik-api.md §8): instead of
// a client secret, each token request carries a short-lived JWT signed with
// the client's private key; the tenant holds only the public JWK.

// Algorithms a client assertion may be signed with; Qlik accepts no others.
const (
	AlgRS256 = "RS256"
	AlgRS512 = "RS512"
	AlgES384 = "ES384"
)

// ClientAssertionType is the client_assertion_type of a JWT assertion (RFC 7523).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// AssertionLifetime is exp - iat of every assertion: Qlik accepts at most
// five minutes, and an assertion is used at once.
const AssertionLifetime = 5 * time.Minute

// minRSABits is the smallest RSA modulus Qlik accepts.
const minRSABits = 2048

// SigningKey is an OAuth client's private key with the key id and algorithm
// it is registered under. It is immutable and safe for concurrent use.
// Every way of formatting it (fmt, slog, encoding/json) shows only the key
// id, the algorithm and the public key's thumbprint, never the private key.
type SigningKey struct {
	kid    string
	alg    string
	signer crypto.Signer // *rsa.PrivateKey or *ecdsa.PrivateKey
	method jwt.SigningMethod
	jwk    JWK
}

// JWK is a public key as an OAuth client registers it (publicKeys):
// kid, kty, alg, use "sig", and n/e (RSA) or crv/x/y (EC), base64url.
type JWK struct {
	KeyID     string `json:"kid"`
	KeyType   string `json:"kty"`
	Algorithm string `json:"alg"`
	Use       string `json:"use"`
	N         string `json:"n,omitempty"`
	E         string `json:"e,omitempty"`
	Curve     string `json:"crv,omitempty"`
	X         string `json:"x,omitempty"`
	Y         string `json:"y,omitempty"`
}

// NewSigningKey checks key for client authentication and names it. alg ""
// picks RS256 for RSA and ES384 for P-384; kid "" is the RFC 7638
// thumbprint of the public key. RSA keys must have at least 2048 bits and
// sign RS256 or RS512; EC keys must be P-384 and sign ES384. Errors wrap
// ErrInvalidRequest and never include key material.
func NewSigningKey(key crypto.Signer, kid, alg string) (*SigningKey, error) {
	jwk, err := PublicJWK(key.Public(), kid, alg)
	if err != nil {
		return nil, err
	}
	k := &SigningKey{kid: jwk.KeyID, alg: jwk.Algorithm, signer: key, jwk: jwk}
	switch key.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
	default:
		return nil, fmt.Errorf("%w: signing key: want an RSA or ECDSA private key", ErrInvalidRequest)
	}
	k.method = jwt.GetSigningMethod(k.alg)
	return k, nil
}

// ParseSigningKey reads a PEM private key (PKCS#8, PKCS#1 or SEC1) and
// checks it as NewSigningKey does. Errors never quote the PEM.
func ParseSigningKey(pemBytes []byte, kid, alg string) (*SigningKey, error) {
	key, err := parsePrivateKeyPEM(pemBytes)
	if err != nil {
		return nil, err
	}
	return NewSigningKey(key, kid, alg)
}

func parsePrivateKeyPEM(pemBytes []byte) (crypto.Signer, error) {
	for rest := pemBytes; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w: signing key: no PEM private key found", ErrInvalidRequest)
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%w: signing key: encrypted PEM is not supported", ErrInvalidRequest)
		default:
			continue // e.g. EC PARAMETERS before the key
		}
		if err != nil {
			// x509's messages describe the structure, never the bytes.
			return nil, fmt.Errorf("%w: signing key: %s block does not parse: %w", ErrInvalidRequest, block.Type, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%w: signing key: want an RSA or ECDSA private key", ErrInvalidRequest)
		}
		return s, nil
	}
}

// ParsePublicKeyPEM reads a PEM public key (PKIX "PUBLIC KEY" or PKCS#1
// "RSA PUBLIC KEY"), for registering a key whose private half is kept
// elsewhere.
func ParsePublicKeyPEM(pemBytes []byte) (crypto.PublicKey, error) {
	for rest := pemBytes; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w: public key: no PEM public key found", ErrInvalidRequest)
		}
		switch block.Type {
		case "PUBLIC KEY":
			return x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			return x509.ParsePKCS1PublicKey(block.Bytes)
		}
	}
}

// PublicJWK describes pub as Qlik registers it, checking it as
// NewSigningKey does (alg "" picks the default, kid "" the thumbprint).
func PublicJWK(pub crypto.PublicKey, kid, alg string) (JWK, error) {
	var j JWK
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N.BitLen() < minRSABits {
			return JWK{}, fmt.Errorf("%w: signing key: RSA key has %d bits, Qlik wants at least %d", ErrInvalidRequest, p.N.BitLen(), minRSABits)
		}
		if alg == "" {
			alg = AlgRS256
		}
		if alg != AlgRS256 && alg != AlgRS512 {
			return JWK{}, fmt.Errorf("%w: signing key: an RSA key signs RS256 or RS512, not %q", ErrInvalidRequest, alg)
		}
		j = JWK{KeyType: "RSA", N: b64(p.N.Bytes()), E: b64(big.NewInt(int64(p.E)).Bytes())}
	case *ecdsa.PublicKey:
		if p.Curve != elliptic.P384() {
			return JWK{}, fmt.Errorf("%w: signing key: an EC key must be on curve P-384 (ES384)", ErrInvalidRequest)
		}
		if alg == "" {
			alg = AlgES384
		}
		if alg != AlgES384 {
			return JWK{}, fmt.Errorf("%w: signing key: a P-384 key signs ES384, not %q", ErrInvalidRequest, alg)
		}
		raw, err := p.Bytes() // 0x04 || X || Y, each padded to 48 bytes
		if err != nil {
			return JWK{}, fmt.Errorf("%w: signing key: %w", ErrInvalidRequest, err)
		}
		j = JWK{KeyType: "EC", Curve: "P-384", X: b64(raw[1:49]), Y: b64(raw[49:])}
	default:
		return JWK{}, fmt.Errorf("%w: signing key: want an RSA or P-384 EC key", ErrInvalidRequest)
	}
	j.Algorithm, j.Use = alg, "sig"
	if kid == "" {
		kid = j.Thumbprint()
	}
	j.KeyID = kid
	return j, nil
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint of the key, base64url.
func (j JWK) Thumbprint() string {
	var members any
	if j.KeyType == "EC" {
		members = struct {
			Crv string `json:"crv"`
			Kty string `json:"kty"`
			X   string `json:"x"`
			Y   string `json:"y"`
		}{j.Curve, j.KeyType, j.X, j.Y}
	} else {
		members = struct {
			E   string `json:"e"`
			Kty string `json:"kty"`
			N   string `json:"n"`
		}{j.E, j.KeyType, j.N}
	}
	raw, _ := json.Marshal(members) // fields in lexicographic order, no spaces
	sum := sha256.Sum256(raw)
	return b64(sum[:])
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// KeyID is the kid the key is registered under.
func (k *SigningKey) KeyID() string { return k.kid }

// Algorithm is RS256, RS512 or ES384.
func (k *SigningKey) Algorithm() string { return k.alg }

// PublicJWK is the public half as the OAuth client registers it.
func (k *SigningKey) PublicJWK() JWK { return k.jwk }

// Equal reports whether k and o are the same key under the same kid and
// algorithm. A nil key equals only nil.
func (k *SigningKey) Equal(o *SigningKey) bool {
	if k == nil || o == nil {
		return k == o
	}
	return k.jwk == o.jwk
}

// String names the key without its private part.
func (k *SigningKey) String() string {
	if k == nil {
		return "<nil>"
	}
	return fmt.Sprintf("SigningKey{kid=%s alg=%s thumbprint=%s}", k.kid, k.alg, k.jwk.Thumbprint())
}

// GoString keeps %#v from printing the private key.
func (k *SigningKey) GoString() string { return k.String() }

// LogValue implements slog.LogValuer without the private key.
func (k *SigningKey) LogValue() slog.Value {
	if k == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("kid", k.kid), slog.String("alg", k.alg))
}

// MarshalJSON encodes the public JWK only.
func (k *SigningKey) MarshalJSON() ([]byte, error) {
	if k == nil {
		return []byte("null"), nil
	}
	return json.Marshal(k.jwk)
}

// Assertion signs a client assertion for clientID at the token endpoint
// audience (the tenant origin the request is posted to + "/oauth/token"),
// issued at now: header alg and kid; claims iss = sub = clientID, aud as a
// single JSON string, a fresh random jti, iat, and exp = iat + 5 minutes.
func (k *SigningKey) Assertion(clientID, audience string, now time.Time) (string, error) {
	jti, err := newUUID()
	if err != nil {
		return "", err
	}
	iat := now.Unix()
	// MapClaims with a plain string: golang-jwt's ClaimStrings would encode
	// one audience as an array.
	tok := jwt.NewWithClaims(k.method, jwt.MapClaims{
		"iss": clientID,
		"sub": clientID,
		"aud": audience,
		"jti": jti,
		"iat": iat,
		"exp": iat + int64(AssertionLifetime/time.Second),
	})
	tok.Header["kid"] = k.kid
	signed, err := tok.SignedString(k.signer)
	if err != nil {
		return "", fmt.Errorf("qlik: signing the client assertion: %w", err)
	}
	return signed, nil
}

// newUUID returns a random (version 4) UUID.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("qlik: jti: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// clientAuth is how a request proves the client: a secret, or an assertion.
type clientAuth struct {
	ClientID            string `json:"client_id"`
	ClientSecret        string `json:"client_secret,omitempty"`
	ClientAssertionType string `json:"client_assertion_type,omitempty"`
	ClientAssertion     string `json:"client_assertion,omitempty"`
}

// authFor signs a fresh assertion when creds hold a key, else passes the
// secret. Assertions are single-use: one per request, retries included.
func (c *Client) authFor(creds Credentials) (clientAuth, error) {
	if creds.Key == nil {
		return clientAuth{ClientID: creds.ClientID, ClientSecret: creds.ClientSecret}, nil
	}
	a, err := creds.Key.Assertion(creds.ClientID, c.TokenEndpoint(), c.now())
	if err != nil {
		return clientAuth{}, err
	}
	return clientAuth{ClientID: creds.ClientID, ClientAssertionType: ClientAssertionType, ClientAssertion: a}, nil
}

// TokenEndpoint is the tenant's /oauth/token URL, the audience of client
// assertions.
func (c *Client) TokenEndpoint() string { return c.base + "/oauth/token" }

// errNoCredentials is the validate failure of Credentials.
var errNoCredentials = errors.New("client id and a client secret or signing key are required")
