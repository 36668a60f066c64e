package qliktest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token exchange: what a browser does before it opens the engine websocket
// (contract section 10). The page holds a user's access token (from
// getAccessToken); @qlik/api trades it at /oauth/token for a short-lived
// temporary token and puts that in the websocket URL, so the long-lived
// token never appears in a URL.
//
// What @qlik/api 2.19 sends (chunks/invoke-fetch-functions-*.js,
// exchangeAccessTokenForTemporaryToken), which is what this accepts:
//
//	POST /oauth/token   content-type: application/json, credentials: include, mode: cors
//	{"subject_token": "<access token>",
//	 "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
//	 "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
//	 "purpose": "websocket" | "webresource",
//	 "redirect_uri": "<the page's URL>", "client_id": "<hostConfig.clientId>"}
//
// It reads access_token from a 200 and treats any other status as an
// authentication error (it clears its token, asks getAccessToken again and
// retries once). The websocket then goes to /app/<id>?accessToken=<temporary>
// (getWebSocketAuthParams); under Node it sends the access token as a
// bearer header instead, which handleEngine still accepts.
//
// Choices where the contract and @qlik/api are silent, and why:
//
//   - No client secret is asked (RFC 8693; the browser has none), but
//     client_id must name a client of the tenant (400 otherwise). It need not
//     be the client the subject token was issued to: nothing public says
//     the tenant checks that.
//   - A subject token that TokenUser refuses (bad signature, expired,
//     revoked, user gone or not active) is 401 "invalid_grant": the
//     reference's 401 text is "invalid login or tokens", and a revoked
//     token must fail here as it fails on REST.
//   - purpose other than websocket or webresource is 400; subject_token_type
//     other than access_token (when present) is 400.
//   - The temporary token lives exchangeLifetime (the fake's choice: long
//     enough to open a socket, short enough that a URL leak is harmless),
//     is signed with a key of its own, so REST calls and a second exchange
//     refuse it (TokenUser never accepts one), and is bound to its purpose:
//     /app/<id> accepts only a websocket one. A temporary token stays valid
//     when its subject token is revoked later (the fake does not chain
//     revocations; nothing public says the tenant does).
//   - The answer is the contract's token set plus issued_token_type.
//     Exchanges are Tier 2 like every /oauth/token call (rate limit,
//     latency, faults, Calls(EndpointToken)); they are counted apart by
//     Exchanges and do not count in IssuedTokens or UserTokenCalls.

// Purposes of the token-exchange grant.
const (
	// PurposeWebsocket asks for a temporary token for /app/<id>?accessToken=.
	PurposeWebsocket = "websocket"
	// PurposeWebresource asks for a temporary token for resource URLs.
	PurposeWebresource = "webresource"
)

// Token exchange parameters.
const (
	grantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	exchangeLifetime       = 2 * time.Minute
	accessTokenQueryParam  = "accessToken"
	temporaryTokenSubType  = "temporary"
	temporaryTokenKeyID    = "qliktest-temporary"
	maxExchangeBodyPeekLen = maxRequestBytes
)

// exchangeState is the tenant's token-exchange state: the key temporary
// tokens are signed with (apart from access tokens, so neither is
// accepted as the other) and counters by purpose.
type exchangeState struct {
	once sync.Once
	key  *ecdsa.PrivateKey

	mu    sync.Mutex
	count map[string]int // purpose -> temporary tokens issued
}

func (x *exchangeState) signingKey() *ecdsa.PrivateKey {
	x.once.Do(func() {
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			panic(fmt.Sprintf("qliktest: generating the temporary-token key: %v", err)) // never fails since Go 1.24
		}
		x.key = k
	})
	return x.key
}

// temporaryClaims are the claims of a temporary token.
type temporaryClaims struct {
	jwt.RegisteredClaims
	SubType  string `json:"subType"`
	ClientID string `json:"client_id"`
	Purpose  string `json:"purpose"`
}

// Exchanges returns how many temporary tokens the token-exchange grant
// issued for purpose (PurposeWebsocket or PurposeWebresource).
func (t *Tenant) Exchanges(purpose string) int {
	t.exchange.mu.Lock()
	defer t.exchange.mu.Unlock()
	return t.exchange.count[purpose]
}

func (x *exchangeState) resetCount() {
	x.mu.Lock()
	defer x.mu.Unlock()
	clear(x.count)
}

// exchangeRequest is the body of a token-exchange request.
type exchangeRequest struct {
	GrantType        string `json:"grant_type"`
	SubjectToken     string `json:"subject_token"`
	SubjectTokenType string `json:"subject_token_type"`
	Purpose          string `json:"purpose"`
	ClientID         string `json:"client_id"`
	RedirectURI      string `json:"redirect_uri"`
}

// tokenExchange answers r when it is a token-exchange request and reports
// whether it did; other grants are left to handleToken, with the body
// intact. Both body encodings are read, as for the other grants.
func (t *Tenant) tokenExchange(w http.ResponseWriter, r *http.Request) bool {
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxExchangeBodyPeekLen+1))
	r.Body = io.NopCloser(bytes.NewReader(raw))
	if err != nil {
		return false // handleToken reports the unreadable body
	}
	var req exchangeRequest
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mediaType {
	case "application/json":
		if json.Unmarshal(raw, &req) != nil || req.GrantType != grantTokenExchange {
			return false
		}
	case "application/x-www-form-urlencoded":
		peek := r.Clone(r.Context())
		peek.Body = io.NopCloser(bytes.NewReader(raw))
		if peek.ParseForm() != nil || peek.PostForm.Get("grant_type") != grantTokenExchange {
			return false
		}
		f := peek.PostForm
		req = exchangeRequest{GrantType: grantTokenExchange, SubjectToken: f.Get("subject_token"),
			SubjectTokenType: f.Get("subject_token_type"), Purpose: f.Get("purpose"),
			ClientID: f.Get("client_id"), RedirectURI: f.Get("redirect_uri")}
	default:
		return false
	}
	t.answerExchange(w, req)
	return true
}

func (t *Tenant) answerExchange(w http.ResponseWriter, req exchangeRequest) {
	switch {
	case req.SubjectToken == "":
		badRequest("subject_token is required.").write(w)
		return
	case req.SubjectTokenType != "" && req.SubjectTokenType != tokenTypeAccessToken:
		badRequest("subject_token_type must be " + tokenTypeAccessToken + ".").write(w)
		return
	case req.Purpose != PurposeWebsocket && req.Purpose != PurposeWebresource:
		badRequest("purpose must be websocket or webresource.").write(w)
		return
	case req.ClientID == "":
		badRequest("client_id is required.").write(w)
		return
	}
	t.mu.Lock()
	_, known := t.clients[req.ClientID]
	t.mu.Unlock()
	if !known {
		badRequest("client_id names no client of this tenant.").write(w)
		return
	}
	_, user, err := t.verify(req.SubjectToken)
	if err != nil {
		oauthError(http.StatusUnauthorized, "HTTP-401", "Unauthorized.", "The subject token is invalid, expired or revoked.").write(w)
		return
	}

	now := t.now()
	exp := now.Add(exchangeLifetime).Truncate(time.Second)
	tok := jwt.NewWithClaims(jwt.SigningMethodES384, temporaryClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: t.url, Subject: user.ID, ID: randomHex(16),
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp),
		},
		SubType: temporaryTokenSubType, ClientID: req.ClientID, Purpose: req.Purpose,
	})
	tok.Header["kid"] = temporaryTokenKeyID
	signed, err := tok.SignedString(t.exchange.signingKey())
	if err != nil {
		writeError(w, http.StatusInternalServerError, "HTTP-500", "Internal server error.", "Signing failed.")
		return
	}
	t.exchange.mu.Lock()
	if t.exchange.count == nil {
		t.exchange.count = make(map[string]int)
	}
	t.exchange.count[req.Purpose]++
	t.exchange.mu.Unlock()

	writeJSON(w, http.StatusOK, struct {
		AccessToken     string `json:"access_token"`
		IssuedTokenType string `json:"issued_token_type"`
		TokenType       string `json:"token_type"`
		ExpiresAt       string `json:"expires_at"`
		ExpiresIn       int64  `json:"expires_in"`
	}{
		AccessToken:     signed,
		IssuedTokenType: tokenTypeAccessToken,
		TokenType:       "bearer",
		ExpiresAt:       exp.UTC().Format("2006-01-02T15:04:05.000Z"),
		ExpiresIn:       int64(math.Ceil(exp.Sub(now).Seconds())),
	})
}

// errWrongPurpose is a temporary token used for what it was not issued for.
var errWrongPurpose = errors.New("temporary token issued for another purpose")

// temporaryUser returns the user a temporary token of purpose acts for:
// signature (the temporary key), expiry on the tenant clock, purpose, and
// that the user still exists and is active. It also returns the client the
// token was exchanged through.
func (t *Tenant) temporaryUser(token, purpose string) (User, string, error) {
	if len(token) > maxTokenBytes {
		return User{}, "", errors.New("token too long")
	}
	var c temporaryClaims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) {
		return &t.exchange.signingKey().PublicKey, nil
	}, jwt.WithValidMethods([]string{jwt.SigningMethodES384.Alg()}), jwt.WithIssuer(t.url),
		jwt.WithTimeFunc(t.now), jwt.WithExpirationRequired(), jwt.WithStrictDecoding())
	if err != nil {
		return User{}, "", err
	}
	if c.Purpose != purpose {
		return User{}, "", errWrongPurpose
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	u, ok := t.users[c.Subject]
	if !ok || u.Status != StatusActive {
		return User{}, "", errors.New("user gone or not active")
	}
	return *u, c.ClientID, nil
}

// engineUser authenticates an engine websocket handshake: a temporary
// websocket token in ?accessToken= (what browsers send), else a bearer
// access token (what @qlik/api sends under Node, and what a proxy adds).
// An access token in the query is refused: the exchange exists so that it
// never travels in a URL. It answers 401 itself and returns false when the
// handshake is refused. crossOrigin reports a browser origin the tenant
// allows (an allowed origin of the token's client, or of any client for
// a bearer token), which the websocket library must then accept.
func (t *Tenant) engineUser(w http.ResponseWriter, r *http.Request) (u User, crossOrigin bool, ok bool) {
	origin := r.Header.Get("Origin")
	if q := r.URL.Query(); q.Has(accessTokenQueryParam) {
		u, clientID, err := t.temporaryUser(q.Get(accessTokenQueryParam), PurposeWebsocket)
		if err != nil {
			writeError(w, http.StatusUnauthorized, "HTTP-401", "Unauthorized.",
				"The accessToken parameter is not a valid websocket token (exchange the access token first).")
			return User{}, false, false
		}
		return u, origin != "" && t.clientAllowsOrigin(clientID, origin), true
	}
	u, ok = t.bearerUser(w, r, false)
	return u, ok && origin != "" && t.originAllowed(origin), ok
}
