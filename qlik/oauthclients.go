package qlik

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// App types of OAuth clients; only web clients are confidential (have
// secrets) and may use the client_credentials and impersonation grants.
const (
	AppTypeWeb            = "web"
	AppTypeNative         = "native"
	AppTypeSPA            = "spa"
	AppTypeAnonymousEmbed = "anonymous-embed"
)

// Consent methods of an OAuth client's connection config. An impersonation
// client must be trusted.
const (
	ConsentRequired = "required"
	ConsentTrusted  = "trusted"
)

// OAuthClient is an OAuth client as /api/v1/oauth-clients describes it.
// ClientSecret is set only by CreateOAuthClient, the one time the tenant shows
// it; every way of formatting an OAuthClient (fmt, slog, encoding/json)
// redacts it.
type OAuthClient struct {
	ClientID           string
	ClientName         string
	Description        string
	AppType            string // AppTypeWeb, ...
	AllowedScopes      []string
	AllowedGrantTypes  []string
	AllowedOrigins     []string
	AllowedAuthMethods []string
	RedirectURIs       []string
	ClientURI          string
	LogoURI            string
	OwnerID            string
	CreatedAt          time.Time // zero when absent or unparseable
	ClientSecret       string    // only on create
	ClientSecretHint   string    // clientSecretHint, else the hint of the last listed secret
	ConsentMethod      string    // connectionConfig.consentMethod when the tenant includes it
	PublicKeys         []JWK     // the keys that verify its assertions (private_key_jwt)
}

// Credentials returns the client id and the secret shown on create.
func (c OAuthClient) Credentials() Credentials {
	return Credentials{ClientID: c.ClientID, ClientSecret: c.ClientSecret}
}

// redact returns c with a non-empty ClientSecret replaced.
func (c OAuthClient) redact() OAuthClient {
	if c.ClientSecret != "" {
		c.ClientSecret = redacted
	}
	return c
}

// String describes the client with ClientSecret redacted.
func (c OAuthClient) String() string {
	type plain OAuthClient // no methods: formats field by field
	return fmt.Sprintf("%+v", plain(c.redact()))
}

// GoString makes %#v redact ClientSecret too.
func (c OAuthClient) GoString() string {
	type goString OAuthClient // no methods, so %#v does not recurse
	s := fmt.Sprintf("%#v", goString(c.redact()))
	return strings.Replace(s, "qlik.goString", "qlik.OAuthClient", 1)
}

// LogValue implements slog.LogValuer with ClientSecret redacted.
func (c OAuthClient) LogValue() slog.Value {
	c = c.redact()
	return slog.GroupValue(
		slog.String("client_id", c.ClientID),
		slog.String("client_name", c.ClientName),
		slog.String("app_type", c.AppType),
		slog.Any("allowed_scopes", c.AllowedScopes),
		slog.Any("allowed_grant_types", c.AllowedGrantTypes),
		slog.Any("allowed_origins", c.AllowedOrigins),
		slog.String("consent_method", c.ConsentMethod),
		slog.String("client_secret", c.ClientSecret),
		slog.String("client_secret_hint", c.ClientSecretHint),
	)
}

// MarshalJSON encodes the client in the tenant's field names with
// clientSecret redacted.
func (c OAuthClient) MarshalJSON() ([]byte, error) {
	return json.Marshal(toWire(c.redact()))
}

// oauthClientWire is the JSON shape of a client in the tenant's answers.
type oauthClientWire struct {
	ClientID           string   `json:"clientId"`
	ClientName         string   `json:"clientName"`
	Description        string   `json:"description,omitempty"`
	AppType            string   `json:"appType"`
	AllowedScopes      []string `json:"allowedScopes,omitempty"`
	AllowedGrantTypes  []string `json:"allowedGrantTypes,omitempty"`
	AllowedOrigins     []string `json:"allowedOrigins,omitempty"`
	AllowedAuthMethods []string `json:"allowedAuthMethods,omitempty"`
	RedirectURIs       []string `json:"redirectUris,omitempty"`
	ClientURI          string   `json:"clientUri,omitempty"`
	LogoURI            string   `json:"logoUri,omitempty"`
	OwnerID            string   `json:"ownerId,omitempty"`
	CreatedAt          string   `json:"createdAt,omitempty"`
	ClientSecret       string   `json:"clientSecret,omitempty"`
	ClientSecretHint   string   `json:"clientSecretHint,omitempty"`
	ClientSecrets      []struct {
		Hint string `json:"hint"`
	} `json:"clientSecrets,omitempty"`
	ConnectionConfig *connectionConfig `json:"connectionConfig,omitempty"`
	PublicKeys       []JWK             `json:"publicKeys,omitempty"`
}

type connectionConfig struct {
	ConsentMethod string `json:"consentMethod,omitempty"`
}

func toWire(c OAuthClient) oauthClientWire {
	w := oauthClientWire{
		ClientID: c.ClientID, ClientName: c.ClientName, Description: c.Description, AppType: c.AppType,
		AllowedScopes: c.AllowedScopes, AllowedGrantTypes: c.AllowedGrantTypes, AllowedOrigins: c.AllowedOrigins,
		AllowedAuthMethods: c.AllowedAuthMethods, RedirectURIs: c.RedirectURIs, ClientURI: c.ClientURI,
		LogoURI: c.LogoURI, OwnerID: c.OwnerID, ClientSecret: c.ClientSecret, ClientSecretHint: c.ClientSecretHint,
		PublicKeys: c.PublicKeys,
	}
	if !c.CreatedAt.IsZero() {
		w.CreatedAt = c.CreatedAt.UTC().Format(time.RFC3339Nano)
	}
	if c.ConsentMethod != "" {
		w.ConnectionConfig = &connectionConfig{ConsentMethod: c.ConsentMethod}
	}
	return w
}

func (w oauthClientWire) client() OAuthClient {
	c := OAuthClient{
		ClientID: w.ClientID, ClientName: w.ClientName, Description: w.Description, AppType: w.AppType,
		AllowedScopes: w.AllowedScopes, AllowedGrantTypes: w.AllowedGrantTypes, AllowedOrigins: w.AllowedOrigins,
		AllowedAuthMethods: w.AllowedAuthMethods, RedirectURIs: w.RedirectURIs, ClientURI: w.ClientURI,
		LogoURI: w.LogoURI, OwnerID: w.OwnerID, ClientSecret: w.ClientSecret, ClientSecretHint: w.ClientSecretHint,
		PublicKeys: w.PublicKeys,
	}
	if t, err := time.Parse(time.RFC3339Nano, w.CreatedAt); err == nil {
		c.CreatedAt = t
	}
	if c.ClientSecretHint == "" && len(w.ClientSecrets) > 0 {
		c.ClientSecretHint = w.ClientSecrets[len(w.ClientSecrets)-1].Hint
	}
	if w.ConnectionConfig != nil {
		c.ConsentMethod = w.ConnectionConfig.ConsentMethod
	}
	return c
}

// OAuthClientCreate is the body of CreateOAuthClient. AppType and ClientName
// are required; empty fields are not sent. An M2M impersonation client is
// AppTypeWeb with grants GrantClientCredentials and GrantImpersonation and
// scope user_default, then SetConsent(..., ConsentTrusted).
type OAuthClientCreate struct {
	AppType            string   `json:"appType"`
	ClientName         string   `json:"clientName"`
	Description        string   `json:"description,omitempty"`
	ClientURI          string   `json:"clientUri,omitempty"`
	LogoURI            string   `json:"logoUri,omitempty"`
	RedirectURIs       []string `json:"redirectUris,omitempty"`
	AllowedScopes      []string `json:"allowedScopes,omitempty"`
	AllowedOrigins     []string `json:"allowedOrigins,omitempty"`
	AllowedGrantTypes  []string `json:"allowedGrantTypes,omitempty"`
	AllowedAuthMethods []string `json:"allowedAuthMethods,omitempty"`
	// PublicKeys register the keys of a private_key_jwt client.
	PublicKeys []JWK `json:"publicKeys,omitempty"`
	// ConsentMethod, when set (only ConsentTrusted is accepted), is sent as
	// connectionConfig.consentMethod, sparing the SetConsent call.
	ConsentMethod string `json:"-"`
}

// MarshalJSON adds connectionConfig when ConsentMethod is set.
func (o OAuthClientCreate) MarshalJSON() ([]byte, error) {
	type plain OAuthClientCreate
	return json.Marshal(struct {
		plain
		ConnectionConfig *connectionConfig `json:"connectionConfig,omitempty"`
	}{plain(o), consentConfig(o.ConsentMethod)})
}

func consentConfig(method string) *connectionConfig {
	if method == "" {
		return nil
	}
	return &connectionConfig{ConsentMethod: method}
}

// PatchOp is one RFC 6902 operation of UpdateOAuthClient. Value is omitted
// when nil, as "remove" wants.
type PatchOp struct {
	Op    string `json:"op"`   // "add", "remove" or "replace"
	Path  string `json:"path"` // e.g. "/allowedOrigins"
	Value any    `json:"value,omitempty"`
}

// ListOptions narrow ListOAuthClients. The zero value lists every client in
// the tenant's default order and page size.
type ListOptions struct {
	Limit  int    // page size; 0 leaves it to the tenant
	Filter string // SCIM filter on clientName, clientId, appType, e.g. `clientName eq "broker"`
	Sort   string // e.g. "+clientName", "-createdAt"
}

// ClientSecret is a secret made by CreateClientSecret. Every way of
// formatting it (fmt, slog, encoding/json) redacts ClientSecret.
type ClientSecret struct {
	ClientID     string
	ClientSecret string
	Hint         string    // names the secret for DeleteClientSecret
	CreatedAt    time.Time // zero when absent or unparseable
}

// Credentials returns the client id and this secret.
func (s ClientSecret) Credentials() Credentials {
	return Credentials{ClientID: s.ClientID, ClientSecret: s.ClientSecret}
}

// String describes the secret with its value redacted.
func (s ClientSecret) String() string {
	return fmt.Sprintf("ClientSecret{ClientID=%s Hint=%s CreatedAt=%s ClientSecret=%s}",
		s.ClientID, s.Hint, s.CreatedAt.Format(time.RFC3339), redacted)
}

// GoString makes %#v redact the secret too.
func (s ClientSecret) GoString() string {
	return fmt.Sprintf("qlik.ClientSecret{ClientID:%q, ClientSecret:%q, Hint:%q, CreatedAt:%q}",
		s.ClientID, redacted, s.Hint, s.CreatedAt.Format(time.RFC3339Nano))
}

// LogValue implements slog.LogValuer with the secret redacted.
func (s ClientSecret) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("client_id", s.ClientID),
		slog.String("hint", s.Hint),
		slog.Time("created_at", s.CreatedAt),
		slog.String("client_secret", redacted),
	)
}

// MarshalJSON encodes the secret's metadata with the value redacted.
func (s ClientSecret) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ClientID     string    `json:"clientId"`
		ClientSecret string    `json:"clientSecret"`
		Hint         string    `json:"hint"`
		CreatedAt    time.Time `json:"createdAt"`
	}{s.ClientID, redacted, s.Hint, s.CreatedAt})
}

func clientPath(id string) string { return "/api/v1/oauth-clients/" + url.PathEscape(id) }

// ListOAuthClients lists the tenant's OAuth clients, following
// links.next.href (absolute or relative, but only on the tenant) for at most
// 100 pages.
func (a *Admin) ListOAuthClients(ctx context.Context, opts ListOptions) ([]OAuthClient, error) {
	if opts.Limit < 0 {
		return nil, fmt.Errorf("%w: negative limit", ErrInvalidRequest)
	}
	q := url.Values{}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Filter != "" {
		q.Set("filter", opts.Filter)
	}
	if opts.Sort != "" {
		q.Set("sort", opts.Sort)
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return nil, err
	}
	ws, err := listAll[oauthClientWire](ctx, a.c, endpointOAuthClients, bearer, "/api/v1/oauth-clients", q)
	if err != nil {
		return nil, err
	}
	out := make([]OAuthClient, 0, len(ws))
	for _, w := range ws {
		if w.ClientID == "" {
			return nil, malformed(endpointOAuthClients, "a client has no clientId")
		}
		w.ClientSecret = "" // never shown outside create; ignore it if it is
		out = append(out, w.client())
	}
	return out, nil
}

// GetOAuthClient returns the client with id (404 as an *Error when unknown).
func (a *Admin) GetOAuthClient(ctx context.Context, id string) (OAuthClient, error) {
	if err := checkID("client id", id); err != nil {
		return OAuthClient{}, err
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return OAuthClient{}, err
	}
	var w oauthClientWire
	if err := a.c.getJSON(ctx, endpointOAuthClients, bearer, a.c.base+clientPath(id), &w); err != nil {
		return OAuthClient{}, err
	}
	if w.ClientID == "" {
		return OAuthClient{}, malformed(endpointOAuthClients, "client has no clientId")
	}
	w.ClientSecret = ""
	return w.client(), nil
}

// CreateOAuthClient creates a client (201) and returns it with its
// ClientSecret, which the tenant never shows again: store it now.
func (a *Admin) CreateOAuthClient(ctx context.Context, create OAuthClientCreate) (OAuthClient, error) {
	if create.AppType == "" || create.ClientName == "" {
		return OAuthClient{}, fmt.Errorf("%w: appType and clientName are required", ErrInvalidRequest)
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return OAuthClient{}, err
	}
	_, body, err := a.c.send(ctx, request{
		endpoint: endpointOAuthClients, method: http.MethodPost,
		url: a.c.base + "/api/v1/oauth-clients", bearer: bearer, body: create,
	})
	if err != nil {
		return OAuthClient{}, err
	}
	var w oauthClientWire
	if err := json.Unmarshal(body, &w); err != nil {
		return OAuthClient{}, malformed(endpointOAuthClients, "body is not a client JSON object")
	}
	if w.ClientID == "" {
		return OAuthClient{}, malformed(endpointOAuthClients, "client has no clientId")
	}
	return w.client(), nil
}

// UpdateOAuthClient applies ops (RFC 6902) to client id. It returns "" when
// the tenant answers 204, and the new client secret when it answers 202
// because the patch made one (adding "client_secret" to /allowedAuthMethods).
func (a *Admin) UpdateOAuthClient(ctx context.Context, id string, ops []PatchOp) (string, error) {
	if err := checkID("client id", id); err != nil {
		return "", err
	}
	if len(ops) == 0 {
		return "", fmt.Errorf("%w: no patch operations", ErrInvalidRequest)
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return "", err
	}
	status, body, err := a.c.send(ctx, request{
		endpoint: endpointOAuthClients, method: http.MethodPatch, url: a.c.base + clientPath(id), bearer: bearer, body: ops,
	})
	if err != nil || status != http.StatusAccepted {
		return "", err
	}
	var r struct {
		ClientSecret string `json:"clientSecret"`
	}
	if json.Unmarshal(body, &r) != nil || r.ClientSecret == "" {
		return "", malformed(endpointOAuthClients, "202 without a clientSecret")
	}
	return r.ClientSecret, nil
}

// DeleteOAuthClient deletes client id, sending the qlik-confirm-delete header
// newer tenants require.
func (a *Admin) DeleteOAuthClient(ctx context.Context, id string) error {
	if err := checkID("client id", id); err != nil {
		return err
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return err
	}
	_, _, err = a.c.send(ctx, request{
		endpoint: endpointOAuthClients, method: http.MethodDelete, url: a.c.base + clientPath(id), bearer: bearer,
		header: map[string]string{"qlik-confirm-delete": id},
	})
	return err
}

// CreateClientSecret adds a secret to client id (201; 409 when it has 5).
func (a *Admin) CreateClientSecret(ctx context.Context, id string) (ClientSecret, error) {
	if err := checkID("client id", id); err != nil {
		return ClientSecret{}, err
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return ClientSecret{}, err
	}
	_, body, err := a.c.send(ctx, request{
		endpoint: endpointClientSecrets, method: http.MethodPost, url: a.c.base + clientPath(id) + "/client-secrets", bearer: bearer,
	})
	if err != nil {
		return ClientSecret{}, err
	}
	var w struct {
		ClientID     string `json:"clientId"`
		ClientSecret string `json:"clientSecret"`
		Hint         string `json:"hint"`
		CreatedAt    string `json:"createdAt"`
	}
	if json.Unmarshal(body, &w) != nil {
		return ClientSecret{}, malformed(endpointClientSecrets, "body is not a client secret JSON object")
	}
	if w.ClientSecret == "" || w.Hint == "" {
		return ClientSecret{}, malformed(endpointClientSecrets, "no clientSecret or hint")
	}
	s := ClientSecret{ClientID: w.ClientID, ClientSecret: w.ClientSecret, Hint: w.Hint}
	if s.ClientID == "" {
		s.ClientID = id
	}
	if t, err := time.Parse(time.RFC3339Nano, w.CreatedAt); err == nil {
		s.CreatedAt = t
	}
	return s, nil
}

// DeleteClientSecret deletes the secret named hint of client id (404 as an
// *Error when either is unknown).
func (a *Admin) DeleteClientSecret(ctx context.Context, id, hint string) error {
	if err := checkID("client id", id); err != nil {
		return err
	}
	if err := checkID("secret hint", hint); err != nil {
		return err
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return err
	}
	_, _, err = a.c.send(ctx, request{
		endpoint: endpointClientSecrets, method: http.MethodDelete,
		url: a.c.base + clientPath(id) + "/client-secrets/" + url.PathEscape(hint), bearer: bearer,
	})
	return err
}

// GetConsent returns the consent method of client id for this tenant
// (ConsentRequired or ConsentTrusted).
func (a *Admin) GetConsent(ctx context.Context, id string) (string, error) {
	if err := checkID("client id", id); err != nil {
		return "", err
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return "", err
	}
	var cc connectionConfig
	if err := a.c.getJSON(ctx, endpointConsent, bearer, a.c.base+clientPath(id)+"/connection-configs/me", &cc); err != nil {
		return "", err
	}
	if cc.ConsentMethod == "" {
		return "", malformed(endpointConsent, "no consentMethod")
	}
	return cc.ConsentMethod, nil
}

// SetConsent sets the consent method of client id (ConsentRequired or
// ConsentTrusted); the tenant answers 204.
func (a *Admin) SetConsent(ctx context.Context, id, method string) error {
	if err := checkID("client id", id); err != nil {
		return err
	}
	if method == "" {
		return fmt.Errorf("%w: consent method is empty", ErrInvalidRequest)
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return err
	}
	_, _, err = a.c.send(ctx, request{
		endpoint: endpointConsent, method: http.MethodPatch, url: a.c.base + clientPath(id) + "/connection-configs/me",
		bearer: bearer, body: []PatchOp{{Op: "replace", Path: "/consentMethod", Value: method}},
	})
	return err
}
