package qlik

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"
)

// Lookup fields accepted in user_lookup.field: the tenant knows no others (no email).
const (
	FieldUserID  = "userId"
	FieldSubject = "subject"
)

// Grant types this client requests at /oauth/token.
const (
	GrantImpersonation     = "urn:qlik:oauth:user-impersonation"
	GrantClientCredentials = "client_credentials"
)

// redacted replaces secret values wherever a value is formatted.
const redacted = "REDACTED"

// UserLookup names the tenant user a token impersonates.
type UserLookup struct {
	Field string `json:"field"`
	Value string `json:"value"`
}

// Validate reports whether l is a lookup the tenant can resolve: Field is
// FieldUserID or FieldSubject and Value is non-empty. Errors wrap ErrInvalidRequest.
func (l UserLookup) Validate() error {
	switch l.Field {
	case FieldUserID, FieldSubject:
	default:
		return fmt.Errorf("%w: user lookup field %q is not %q or %q", ErrInvalidRequest, l.Field, FieldUserID, FieldSubject)
	}
	if l.Value == "" {
		return fmt.Errorf("%w: user lookup value is empty", ErrInvalidRequest)
	}
	return nil
}

// Credentials of an OAuth client: its id and either a secret or, for
// Private Key JWT authentication, a signing key (which then replaces the
// secret). Every way of formatting them (fmt, slog, encoding/json) hides
// ClientSecret and the private key, so they can sit in config structs that
// get logged.
type Credentials struct {
	ClientID     string
	ClientSecret string
	// Key, when set, signs a client assertion for every request instead of
	// sending ClientSecret.
	Key *SigningKey
}

// String returns the client id with the secret redacted.
func (c Credentials) String() string {
	if c.Key != nil {
		return "ClientID=" + c.ClientID + " Key=" + c.Key.String()
	}
	return "ClientID=" + c.ClientID + " ClientSecret=" + redacted
}

// GoString makes %#v redact the secret too.
func (c Credentials) GoString() string {
	if c.Key != nil {
		return fmt.Sprintf("qlik.Credentials{ClientID:%q, Key:%s}", c.ClientID, c.Key.GoString())
	}
	return fmt.Sprintf("qlik.Credentials{ClientID:%q, ClientSecret:%q}", c.ClientID, redacted)
}

// LogValue implements slog.LogValuer with the secret redacted.
func (c Credentials) LogValue() slog.Value {
	if c.Key != nil {
		return slog.GroupValue(slog.String("client_id", c.ClientID), slog.Any("key", c.Key))
	}
	return slog.GroupValue(
		slog.String("client_id", c.ClientID),
		slog.String("client_secret", redacted),
	)
}

// MarshalJSON encodes the client id and a redacted secret.
func (c Credentials) MarshalJSON() ([]byte, error) {
	if c.Key != nil {
		return json.Marshal(struct {
			ClientID string      `json:"client_id"`
			Key      *SigningKey `json:"key"`
		}{c.ClientID, c.Key})
	}
	return json.Marshal(struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}{c.ClientID, redacted})
}

func (c Credentials) validate() error {
	if c.ClientID == "" || (c.ClientSecret == "" && c.Key == nil) {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, errNoCredentials)
	}
	return nil
}

// Token is a successful /oauth/token answer. String, GoString and LogValue
// redact AccessToken. It deliberately has no MarshalJSON, so a caller can
// serialise it to cache it; never log a Token as JSON.
type Token struct {
	AccessToken string
	TokenType   string    // always "bearer"
	Scope       string    // space-delimited scopes granted
	ExpiresAt   time.Time // the earlier usable one of expires_at and receipt time + expires_in
	// ExpiryWarning is non-empty when the tenant's expires_at and
	// expires_in did not agree (one garbled, not in the future, or the two
	// apart by more than two minutes): it says which was used. The token
	// is still good; a caller logs this once, not per token.
	ExpiryWarning string
}

// String describes the token with AccessToken redacted.
func (t Token) String() string {
	return fmt.Sprintf("Token{TokenType=%s Scope=%q ExpiresAt=%s AccessToken=%s}",
		t.TokenType, t.Scope, t.ExpiresAt.Format(time.RFC3339), redacted)
}

// GoString makes %#v redact the access token too.
func (t Token) GoString() string {
	return fmt.Sprintf("qlik.Token{AccessToken:%q, TokenType:%q, Scope:%q, ExpiresAt:%q}",
		redacted, t.TokenType, t.Scope, t.ExpiresAt.Format(time.RFC3339Nano))
}

// LogValue implements slog.LogValuer with AccessToken redacted.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("token_type", t.TokenType),
		slog.String("scope", t.Scope),
		slog.Time("expires_at", t.ExpiresAt),
		slog.String("access_token", redacted),
	)
}
