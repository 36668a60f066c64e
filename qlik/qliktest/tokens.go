package qliktest

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ErrInvalidToken is returned by TokenUser for a token /api/v1/users/me would
// refuse: malformed, badly signed, expired, revoked, or for a user who is gone
// or disabled.
var ErrInvalidToken = errors.New("qliktest: invalid access token")

// maxTokenBytes caps what is handed to the JWT parser (CVE-2025-30204).
const maxTokenBytes = 8 << 10

// accessClaims are the claims of an issued access token.
type accessClaims struct {
	jwt.RegisteredClaims
	SubType  string `json:"subType"`
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
}

// newClaims builds the claims of a token for user issued at now. exp is
// truncated to whole seconds, the resolution of the JWT claim, so expires_at
// and the tenant's own expiry check agree.
func (t *Tenant) newClaims(userID, clientID, scope string, now time.Time) accessClaims {
	exp := now.Add(t.lifetime).Truncate(time.Second)
	return accessClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    t.url,
			Subject:   userID,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
			ID:        randomHex(16),
		},
		SubType:  "user",
		ClientID: clientID,
		Scope:    scope,
	}
}

func (t *Tenant) sign(c accessClaims) (string, error) {
	tok := jwt.NewWithClaims(jwt.SigningMethodES384, c)
	tok.Header["kid"] = "qliktest"
	s, err := tok.SignedString(t.key)
	if err != nil {
		return "", fmt.Errorf("qliktest: signing token: %w", err)
	}
	return s, nil
}

// parse verifies the signature of accessToken and, when validate is set, its
// expiry against the tenant clock.
func (t *Tenant) parse(accessToken string, validate bool) (*accessClaims, error) {
	if len(accessToken) > maxTokenBytes {
		return nil, errors.New("token too long")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodES384.Alg()}),
		jwt.WithIssuer(t.url),
		jwt.WithTimeFunc(t.now),
		jwt.WithExpirationRequired(),
		jwt.WithStrictDecoding(),
	}
	if !validate {
		opts = append(opts, jwt.WithoutClaimsValidation())
	}
	var c accessClaims
	_, err := jwt.ParseWithClaims(accessToken, &c, func(*jwt.Token) (any, error) {
		return &t.key.PublicKey, nil
	}, opts...)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// TokenUser returns the user accessToken acts for, verifying it as
// /api/v1/users/me does: signature, expiry on the tenant clock, revocation,
// and that the user still exists and is active. Errors wrap ErrInvalidToken.
func (t *Tenant) TokenUser(accessToken string) (User, error) {
	_, u, err := t.verify(accessToken)
	return u, err
}

// verify checks accessToken as TokenUser does and also returns its claims.
func (t *Tenant) verify(accessToken string) (*accessClaims, User, error) {
	c, err := t.parse(accessToken, true)
	if err != nil {
		return nil, User{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.revoked[c.ID]; ok {
		return nil, User{}, fmt.Errorf("%w: revoked", ErrInvalidToken)
	}
	u, ok := t.users[c.Subject]
	switch {
	case !ok:
		return nil, User{}, fmt.Errorf("%w: user no longer exists", ErrInvalidToken)
	case u.Status != StatusActive:
		return nil, User{}, fmt.Errorf("%w: user is %s", ErrInvalidToken, u.Status)
	}
	return c, *u, nil
}

// RevokeToken revokes accessToken as if /oauth/revoke had been called.
// Tokens the tenant did not sign are ignored, as the endpoint does.
func (t *Tenant) RevokeToken(accessToken string) {
	c, err := t.parse(accessToken, false)
	if err != nil || c.ID == "" || c.ExpiresAt == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for jti, exp := range t.revoked {
		if now.After(exp) {
			delete(t.revoked, jti) // expired tokens fail verification anyway
		}
	}
	t.revoked[c.ID] = c.ExpiresAt.Time
}
