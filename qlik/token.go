package qlik

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
)

// tokenResponse is the 200 body of /oauth/token.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	Scope       string `json:"scope"`
	// ExpiresAt is raw so that a value of the wrong JSON type (a number,
	// null) spoils only itself, not the token.
	ExpiresAt json.RawMessage `json:"expires_at"`
	ExpiresIn json.RawMessage `json:"expires_in"` // 21600 or "21600"
}

// ParseTokenResponse parses the body of a 200 answer from /oauth/token received
// at now. Unknown fields are ignored. It fails with ErrMalformedResponse unless
// the body is a JSON object with a non-empty access_token, a token_type that is
// empty or "bearer" (any case; normalised to "bearer"), and an expiry after now
// from expires_at (RFC 3339) or expires_in seconds (see Token.ExpiryWarning
// for how the two are reconciled). Reasons never quote the body, which may
// hold a token.
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
	exp, warning, reason := expiry(r, now)
	if reason != "" {
		return nil, reason
	}
	return &Token{AccessToken: r.AccessToken, TokenType: "bearer", Scope: r.Scope, ExpiresAt: exp, ExpiryWarning: warning}, ""
}

// expiryTolerance is how far expires_at and now+expires_in may differ before
// the difference is reported: the request's own latency and some clock skew.
const expiryTolerance = 2 * time.Minute

// expiry reconciles expires_at and expires_in. The schema makes expires_at
// the authority, but the reference's own example carries one in 1970: a
// value that is garbled or not after now is set aside, and of the usable
// ones the earlier wins, so neither a wrong expires_at nor a wrong
// expires_in can make a token outlive what the other says. warning says
// what was set aside or how the two disagreed; reason is why no expiry is
// usable.
func expiry(r tokenResponse, now time.Time) (exp time.Time, warning, reason string) {
	var at, in time.Time
	var atState, inState string // "", "ok", "invalid", "past"
	if len(r.ExpiresAt) > 0 && string(r.ExpiresAt) != "null" {
		atState = "invalid"
		var raw string
		if json.Unmarshal(r.ExpiresAt, &raw) != nil {
			raw = ""
		}
		if t, err := time.Parse(time.RFC3339Nano, raw); err == nil {
			at, atState = t, "past"
			if t.After(now) {
				atState = "ok"
			}
		}
	}
	if len(r.ExpiresIn) > 0 && string(r.ExpiresIn) != "null" {
		inState = "invalid"
		var num json.Number
		if json.Unmarshal(r.ExpiresIn, &num) != nil {
			var str string
			_ = json.Unmarshal(r.ExpiresIn, &str)
			num = json.Number(strings.TrimSpace(str))
		}
		if secs, err := num.Float64(); err == nil && !math.IsNaN(secs) {
			// Bound before converting: a huge value would overflow
			// time.Duration into the past.
			const maxSecs = float64(math.MaxInt64 / int64(time.Second))
			secs = min(max(secs, -maxSecs), maxSecs)
			in, inState = now.Add(time.Duration(secs*float64(time.Second))), "past"
			if in.After(now) {
				inState = "ok"
			}
		}
	}
	switch {
	case atState == "ok" && inState == "ok":
		exp = at
		if in.Before(at) {
			exp = in
		}
		if d := at.Sub(in); d > expiryTolerance || d < -expiryTolerance {
			warning = fmt.Sprintf("expires_at and expires_in disagree by %v; using the earlier", d.Round(time.Second))
		}
		return exp, warning, ""
	case atState == "ok":
		if inState != "" {
			warning = "expires_in is " + inState + "; using expires_at"
		}
		return at, warning, ""
	case inState == "ok":
		if atState != "" {
			warning = "expires_at is " + atState + "; using expires_in"
		}
		return in, warning, ""
	case atState == "past" || inState == "past":
		if atState == "invalid" || inState == "invalid" {
			return time.Time{}, "", "invalid expiry"
		}
		return time.Time{}, "", "token already expired"
	case atState == "invalid" && inState == "invalid":
		return time.Time{}, "", "invalid expires_at and expires_in"
	case atState == "invalid":
		return time.Time{}, "", "invalid expires_at"
	case inState == "invalid":
		return time.Time{}, "", "invalid expires_in"
	}
	return time.Time{}, "", "neither expires_at nor expires_in"
}
