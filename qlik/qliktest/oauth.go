package qliktest

import (
	"encoding/json"
	"math"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Lookup fields of user_lookup.
const (
	lookupUserID  = "userId"
	lookupSubject = "subject"
)

// oauthRequest holds the parameters of /oauth/token and /oauth/revoke, from
// either body encoding.
type oauthRequest struct {
	GrantType     string
	ClientID      string
	ClientSecret  string
	Scope         string
	Lookup        *userLookup // nil when absent
	LookupInvalid bool        // present but not a {field, value} object
	Token         string
	TokenTypeHint string
	// Private Key JWT authentication, and the aud it must name.
	ClientAssertionType, ClientAssertion, TokenURL string
}

type userLookup struct {
	Field string `json:"field"`
	Value string `json:"value"`
}

// readOAuthRequest parses an application/json or
// application/x-www-form-urlencoded body. In a form, user_lookup may be a
// JSON string or the pair user_lookup[field] / user_lookup[value].
func readOAuthRequest(r *http.Request) (oauthRequest, *apiError) {
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var req oauthRequest
	switch mediaType {
	case "application/json":
		var body struct {
			GrantType     string          `json:"grant_type"`
			ClientID      string          `json:"client_id"`
			ClientSecret  string          `json:"client_secret"`
			Scope         string          `json:"scope"`
			UserLookup    json.RawMessage `json:"user_lookup"`
			Token         string          `json:"token"`
			TokenTypeHint string          `json:"token_type_hint"`
			AssertionType string          `json:"client_assertion_type"`
			Assertion     string          `json:"client_assertion"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			return req, badRequest("The request body is not a valid JSON object.")
		}
		req = oauthRequest{
			GrantType: body.GrantType, ClientID: body.ClientID, ClientSecret: body.ClientSecret,
			Scope: body.Scope, Token: body.Token, TokenTypeHint: body.TokenTypeHint,
			ClientAssertionType: body.AssertionType, ClientAssertion: body.Assertion,
		}
		req.Lookup, req.LookupInvalid = decodeLookup(body.UserLookup)
	case "application/x-www-form-urlencoded":
		if err := r.ParseForm(); err != nil {
			return req, badRequest("The request body is not a valid form.")
		}
		f := r.PostForm
		req = oauthRequest{
			GrantType: f.Get("grant_type"), ClientID: f.Get("client_id"), ClientSecret: f.Get("client_secret"),
			Scope: f.Get("scope"), Token: f.Get("token"), TokenTypeHint: f.Get("token_type_hint"),
			ClientAssertionType: f.Get("client_assertion_type"), ClientAssertion: f.Get("client_assertion"),
		}
		switch {
		case f.Has("user_lookup"):
			req.Lookup, req.LookupInvalid = decodeLookup(json.RawMessage(f.Get("user_lookup")))
		case f.Has("user_lookup[field]") || f.Has("user_lookup[value]"):
			req.Lookup = &userLookup{Field: f.Get("user_lookup[field]"), Value: f.Get("user_lookup[value]")}
		}
	default:
		return req, badRequest("Content-Type must be application/json or application/x-www-form-urlencoded.")
	}
	req.TokenURL = requestTokenURL(r)
	return req, nil
}

// decodeLookup accepts a JSON object, or a JSON string holding one.
func decodeLookup(raw json.RawMessage) (l *userLookup, invalid bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		raw = json.RawMessage(s)
	}
	var v userLookup
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, true
	}
	return &v, false
}

// handleToken answers POST /oauth/token.
//
// Checks run in this order (codes in dialect.go): body encoding (400),
// client authentication (400 OAUTH-14, or 401 with
// WithClientAuthFailureStatus), grant_type known (400), grant allowed for
// the client (400: the contract lists bad grants under 400), user_lookup
// shape (400), user exists (401: the contract's UNCONFIRMED likely reading),
// user active (403), client consent method trusted (400: a client
// misconfiguration, so not a 403 that would blame the user), scope within
// the client's allow-list (400).
func (t *Tenant) handleToken(w http.ResponseWriter, r *http.Request) {
	if t.tokenExchange(w, r) {
		return // grant_type token-exchange (exchange.go)
	}
	req, apiErr := readOAuthRequest(r)
	if apiErr != nil {
		apiErr.write(w)
		return
	}
	now := t.now()
	claims, apiErr := t.authorizeToken(req, now)
	if apiErr != nil {
		apiErr.write(w)
		return
	}
	// Sign outside the lock: ES384 is the slow part of a token request.
	signed, err := t.sign(claims)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "HTTP-500", "Internal server error.", "Signing failed.")
		return
	}
	t.mu.Lock()
	t.issued++
	t.mu.Unlock()

	exp := claims.ExpiresAt.Time
	writeJSON(w, http.StatusOK, struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		Scope       string `json:"scope"`
		ExpiresAt   string `json:"expires_at"`
		ExpiresIn   int64  `json:"expires_in"`
	}{
		AccessToken: signed,
		TokenType:   "bearer",
		Scope:       claims.Scope,
		ExpiresAt:   exp.UTC().Format("2006-01-02T15:04:05.000Z"),
		ExpiresIn:   int64(math.Ceil(exp.Sub(now).Seconds())),
	})
}

// authorizeToken validates a token request against tenant state and returns
// the claims to sign.
func (t *Tenant) authorizeToken(req oauthRequest, now time.Time) (accessClaims, *apiError) {
	t.mu.Lock()
	defer t.mu.Unlock()

	client, ok := t.authenticateRequestLocked(req, now)
	if !ok {
		return accessClaims{}, t.invalidClient()
	}
	switch req.GrantType {
	case grantClientCredentials, grantImpersonation:
	case "":
		return accessClaims{}, badRequest("grant_type is required.")
	default:
		return accessClaims{}, oauthError(http.StatusBadRequest, codeUnsupportedGrant, "Unsupported grant type.", "The grant type is not supported.")
	}
	if !slices.Contains(client.AllowedGrants, req.GrantType) {
		return accessClaims{}, oauthError(http.StatusBadRequest, codeGrantNotAllowed, "Grant type not allowed.", "The client is not allowed to use this grant type.")
	}

	var user *User
	if req.GrantType == grantImpersonation {
		switch {
		case req.LookupInvalid || req.Lookup == nil:
			return accessClaims{}, badRequest("user_lookup {field, value} is required.")
		case req.Lookup.Field != lookupUserID && req.Lookup.Field != lookupSubject:
			return accessClaims{}, badRequest("user_lookup.field must be userId or subject.")
		case req.Lookup.Value == "":
			return accessClaims{}, badRequest("user_lookup.value is required.")
		}
		if user, ok = t.lookupUserLocked(req.Lookup.Field, req.Lookup.Value); !ok {
			return accessClaims{}, oauthError(http.StatusUnauthorized, codeUnknownUser, "Unauthorized.", "The user does not exist.")
		}
		t.userCalls[user.ID]++
		if user.Status != StatusActive {
			return accessClaims{}, oauthError(http.StatusForbidden, codeUserNotActive, "Forbidden.", "The user is not active.")
		}
		if client.ConsentMethod != consentTrusted {
			return accessClaims{}, oauthError(http.StatusBadRequest, codeConsent, "Consent required.",
				"The client's consent method is not trusted; impersonation needs PATCH /api/v1/oauth-clients/{id}/connection-configs/me.")
		}
	}

	scope, ok := grantScope(client.AllowedScopes, req.Scope)
	if !ok {
		return accessClaims{}, oauthError(http.StatusBadRequest, codeScope, "Invalid scope.", "A requested scope is not allowed for this client.")
	}
	if user == nil {
		user = t.botUserLocked(client.ID)
	}
	return t.newClaims(user.ID, client.ID, scope, now), nil
}

// grantScope narrows allowed to the space-delimited requested scopes; empty
// means all of allowed.
func grantScope(allowed []string, requested string) (string, bool) {
	want := strings.Fields(requested)
	if len(want) == 0 {
		return strings.Join(allowed, " "), true
	}
	var granted []string
	for _, s := range want {
		if !slices.Contains(allowed, s) {
			return "", false
		}
		if !slices.Contains(granted, s) {
			granted = append(granted, s)
		}
	}
	return strings.Join(granted, " "), true
}

// handleRevoke answers POST /oauth/revoke. Client credentials are optional
// but must be valid when given (as /oauth/token refuses them). A missing token is 400; an unknown or
// garbage token is revoked successfully, as RFC 7009 has it.
func (t *Tenant) handleRevoke(w http.ResponseWriter, r *http.Request) {
	req, apiErr := readOAuthRequest(r)
	if apiErr != nil {
		apiErr.write(w)
		return
	}
	if req.ClientID != "" || req.ClientSecret != "" || req.ClientAssertion != "" {
		t.mu.Lock()
		_, ok := t.authenticateRequestLocked(req, t.now())
		t.mu.Unlock()
		if !ok {
			t.invalidClient().write(w)
			return
		}
	}
	if req.Token == "" {
		badRequest("token is required.").write(w)
		return
	}
	t.RevokeToken(req.Token)
	w.WriteHeader(http.StatusOK)
}
