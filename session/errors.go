package session

import (
	"errors"
)

// Reason is the bounded, machine-readable cause of a rejected session token.
// Callers use it as a metrics label and to choose a response; it never carries
// token or claim content.
type Reason string

// Reasons a session token is rejected. The set is closed: Verify and
// TokenFromRequest never return any other value.
const (
	ReasonMissing       Reason = "missing_token"
	ReasonTooLarge      Reason = "token_too_large"
	ReasonMalformed     Reason = "malformed"
	ReasonAlgorithm     Reason = "algorithm_not_allowed" // including alg none/None/NONE
	ReasonUnknownKey    Reason = "unknown_key"
	ReasonSignature     Reason = "bad_signature"
	ReasonExpired       Reason = "expired"
	ReasonNotYetValid   Reason = "not_yet_valid" // nbf or iat in the future
	ReasonMissingExpiry Reason = "missing_expiry"
	ReasonIssuer        Reason = "bad_issuer"
	ReasonAudience      Reason = "bad_audience"
	ReasonUserClaim     Reason = "bad_user_claim" // missing, empty, non-string
	ReasonTenantClaim   Reason = "bad_tenant_claim"
	ReasonGroupsClaim   Reason = "bad_groups_claim" // not a list, too many, a name not a string, empty or too long
	ReasonCritical      Reason = "unsupported_crit_header"
	ReasonInvalid       Reason = "invalid" // anything else
)

// Reasons lists every Reason, so that callers can pre-initialise metric label
// values. It returns a new slice on each call.
func Reasons() []Reason {
	return []Reason{
		ReasonMissing,
		ReasonTooLarge,
		ReasonMalformed,
		ReasonAlgorithm,
		ReasonUnknownKey,
		ReasonSignature,
		ReasonExpired,
		ReasonNotYetValid,
		ReasonMissingExpiry,
		ReasonIssuer,
		ReasonAudience,
		ReasonUserClaim,
		ReasonTenantClaim,
		ReasonGroupsClaim,
		ReasonCritical,
		ReasonInvalid,
	}
}

// Error is the error returned for every rejected session token.
//
// Error() is short and fixed ("session: <reason>") so it is safe to log and to
// return to clients. Err keeps the underlying cause for errors.Is/As (for
// example jwt.ErrTokenExpired); its text comes from the JWT and JWKS libraries
// and may include the token's (attacker-chosen) kid, so log it only at debug
// level, if at all.
type Error struct {
	Reason Reason
	Err    error
}

// Error returns "session: " followed by the reason.
func (e *Error) Error() string {
	return "session: " + string(e.Reason)
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of the first *Error in err's chain,
// ReasonInvalid for any other non-nil error, and "" for nil.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var se *Error
	if errors.As(err, &se) {
		return se.Reason
	}
	return ReasonInvalid
}

// reject builds the *Error returned by Verify and TokenFromRequest.
func reject(r Reason, err error) *Error {
	return &Error{Reason: r, Err: err}
}

var (
	errNoToken         = errors.New("no session token in request")
	errTokenTooLarge   = errors.New("session token exceeds the size limit")
	errSegments        = errors.New("token does not have exactly three segments")
	errHeaderEncoding  = errors.New("token header is not canonical base64url")
	errHeaderJSON      = errors.New("token header is not a JSON object")
	errAlgNotAllowed   = errors.New("token alg is not in the allow-list")
	errCritHeader      = errors.New("token header has crit")
	errKeyAlgMismatch  = errors.New("no configured key matches the token alg")
	errNoUsableJWK     = errors.New("no usable JWKS key for the token alg")
	errBadKID          = errors.New("token kid is not a string")
	errClosed          = errors.New("verifier is closed")
	errClaim           = errors.New("claim is missing, empty, not a string or has control characters")
	errSubject         = errors.New("sub claim is not a string")
	errNotValid        = errors.New("token not valid")
	errAuthScheme      = errors.New("authorization scheme is not Bearer")
	errDuplicateSource = errors.New("more than one Authorization header or session cookie")
)
