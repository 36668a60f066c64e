package qlik

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
)

// tokenResponse is the 200 body of /oauth/token. expires_in is a json.Number so
// that both 21600 and "21600" decode.
type tokenResponse struct {
	AccessToken string      `json:"access_token"`
	TokenType   string      `json:"token_type"`
	Scope       string      `json:"scope"`
	ExpiresAt   string      `json:"expires_at"`
	ExpiresIn   json.Number `json:"expires_in"`
}

// ParseTokenResponse parses the body of a 200 answer from /oauth/token received
// at now. Unknown fields are ignored. It fails with ErrMalformedResponse unless
// the body is a JSON object with a non-empty access_token, a token_type that is
// empty or "bearer" (any case; normalised to "bearer"), and an expiry after now
// taken from expires_at (RFC 3339) or, failing that, expires_in seconds.
// Reasons never quote the body, which may hold a token.
func ParseTokenResponse(body []byte, now time.Time) (*Token, error) {
	tok, reason := parseToken(body, now)
	if reason != "" {
		return nil, fmt.Errorf("%w: %s", ErrMalformedResponse, reason)
	}
	return tok, nil
}

func parseToken(body []byte, now time.Time) (*Token, string) {
	var r tokenResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, "body is not a valid token JSON object"
	}
	if r.AccessToken == "" {
		return nil, "no access_token"
	}
	if r.TokenType != "" && !strings.EqualFold(r.TokenType, "bearer") {
		return nil, "token_type is not bearer"
	}
	exp, reason := expiry(r, now)
	if reason != "" {
		return nil, reason
	}
	if !exp.After(now) {
		return nil, "token already expired"
	}
	return &Token{AccessToken: r.AccessToken, TokenType: "bearer", Scope: r.Scope, ExpiresAt: exp}, ""
}

// expiry prefers expires_at and falls back to expires_in, as the contract says;
// a garbled expires_at with a usable expires_in still yields a token.
func expiry(r tokenResponse, now time.Time) (time.Time, string) {
	if r.ExpiresAt != "" {
		if t, err := time.Parse(time.RFC3339Nano, r.ExpiresAt); err == nil {
			return t, ""
		}
	}
	if r.ExpiresIn != "" {
		secs, err := r.ExpiresIn.Float64()
		if err != nil || math.IsNaN(secs) {
			return time.Time{}, "invalid expires_in"
		}
		// Bound before converting: a huge value would overflow time.Duration
		// into the past.
		const maxSecs = float64(math.MaxInt64 / int64(time.Second))
		secs = min(max(secs, -maxSecs), maxSecs)
		return now.Add(time.Duration(secs * float64(time.Second))), ""
	}
	if r.ExpiresAt != "" {
		return time.Time{}, "invalid expires_at"
	}
	return time.Time{}, "neither expires_at nor expires_in"
}
