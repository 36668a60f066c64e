package qliktest

import (
	"crypto/subtle"
	"encoding/json"
	"slices"
	"time"
)

// Grant types the tenant knows.
const (
	grantClientCredentials = "client_credentials"
	grantImpersonation     = "urn:qlik:oauth:user-impersonation"
)

// App types, auth methods, consent methods and scopes of OAuth clients.
const (
	appTypeWeb        = "web"
	authClientSecret  = "client_secret"
	authPrivateKeyJWT = "private_key_jwt"
	consentRequired   = "required"
	consentTrusted    = "trusted"
	scopeAdminClassic = "admin_classic" // grants every admin API
	scopeAdminUsers   = "admin.users"   // grants the users API
)

const (
	maxSecretsPerClient = 5 // Qlik's documented limit
	secretHintLength    = 6
)

// OAuthClient is an OAuth client registered at the tenant.
type OAuthClient struct {
	ID             string   // generated (32 hex digits) when empty
	Secret         string   // generated when empty; read back, the newest of the client's secrets ("" when it has none)
	Name           string   // defaults to ID
	AppType        string   // "web" by default
	AllowedGrants  []string // nil means client_credentials and user impersonation
	AllowedScopes  []string // nil means ["user_default"]
	AllowedOrigins []string
	// ConsentMethod is "trusted" or "required". AddClient defaults it to
	// "trusted"; clients created through POST /api/v1/oauth-clients start
	// "required" unless the body's connectionConfig asks otherwise. The
	// impersonation grant requires "trusted" (a 400 otherwise), so
	// provisioning that forgets to switch it fails here as it would for real
	// users.
	ConsentMethod      string
	Description        string
	ClientURI          string
	LogoURI            string
	RedirectURIs       []string
	AllowedAuthMethods []string // nil means ["client_secret"]; without it secrets do not authenticate
	OwnerID            string   // the user who created the client through the API
	CreatedAt          time.Time
	// PublicKeys are the client's JWKs (a JSON array), which verify its
	// assertions when AllowedAuthMethods holds "private_key_jwt".
	PublicKeys json.RawMessage
}

// clientRecord is a stored client with what the exported view leaves out.
type clientRecord struct {
	OAuthClient
	secrets    []clientSecret // oldest first
	jwksURI    string
	publicKeys json.RawMessage
	updatedAt  time.Time
	seq        int64 // creation order: the default list order
}

type clientSecret struct {
	value, hint, createdBy string
	createdAt              time.Time
}

// AddClient registers c, filling in the defaults, and returns what was
// stored. A client with the same ID is replaced.
func (t *Tenant) AddClient(c OAuthClient) OAuthClient {
	if c.ID == "" {
		c.ID = randomHex(16)
	}
	if c.Secret == "" {
		c.Secret = randomHex(32)
	}
	if c.Name == "" {
		c.Name = c.ID
	}
	if c.AppType == "" {
		c.AppType = appTypeWeb
	}
	if c.AllowedGrants == nil {
		c.AllowedGrants = []string{grantClientCredentials, grantImpersonation}
	}
	if c.AllowedScopes == nil {
		c.AllowedScopes = []string{"user_default"}
	}
	if c.ConsentMethod == "" {
		c.ConsentMethod = consentTrusted
	}
	if c.AllowedAuthMethods == nil {
		c.AllowedAuthMethods = []string{authClientSecret}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.CreatedAt.IsZero() {
		c.CreatedAt = t.now()
	}
	rec := &clientRecord{OAuthClient: c.clone(), updatedAt: c.CreatedAt, publicKeys: slices.Clone(c.PublicKeys)}
	rec.secrets = []clientSecret{{value: c.Secret, hint: hintFor(c.Secret, nil), createdAt: c.CreatedAt}}
	t.storeClientLocked(rec)
	return c
}

// AddAdminClient registers a client that can call the admin APIs: scope
// admin_classic, grant client_credentials, as a tenant admin would set one up
// for provisioning. Get its token with the client_credentials grant.
func (t *Tenant) AddAdminClient() OAuthClient {
	id := randomHex(16)
	return t.AddClient(OAuthClient{
		ID:            id,
		Name:          "admin-" + id[:8],
		AllowedGrants: []string{grantClientCredentials},
		AllowedScopes: []string{scopeAdminClassic},
	})
}

// OAuthClient returns the client with id, Secret being its newest secret.
func (t *Tenant) OAuthClient(id string) (OAuthClient, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rec, ok := t.clients[id]
	if !ok {
		return OAuthClient{}, false
	}
	return rec.view(), true
}

// OAuthClientByName returns the oldest client named name (names need not be
// unique), Secret being its newest secret.
func (t *Tenant) OAuthClientByName(name string) (OAuthClient, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var found *clientRecord
	for _, rec := range t.clients {
		if rec.Name == name && (found == nil || rec.seq < found.seq) {
			found = rec
		}
	}
	if found == nil {
		return OAuthClient{}, false
	}
	return found.view(), true
}

// SetClientSecret replaces the secrets of clientID with secret, as a
// rotation would. Unknown clients are ignored.
func (t *Tenant) SetClientSecret(clientID, secret string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec, ok := t.clients[clientID]; ok {
		rec.secrets = []clientSecret{{value: secret, hint: hintFor(secret, nil), createdAt: t.now()}}
		rec.Secret = secret
	}
}

// SetConsentMethod sets the consent method of clientID ("required" or
// "trusted") as PATCH .../connection-configs/me would. Unknown clients are
// ignored.
func (t *Tenant) SetConsentMethod(clientID, method string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec, ok := t.clients[clientID]; ok {
		rec.ConsentMethod = method
	}
}

func (t *Tenant) storeClientLocked(rec *clientRecord) {
	t.seq++
	rec.seq = t.seq
	t.clients[rec.ID] = rec
}

func (rec *clientRecord) view() OAuthClient {
	c := rec.clone()
	c.PublicKeys = slices.Clone(rec.publicKeys)
	c.Secret = ""
	if n := len(rec.secrets); n > 0 {
		c.Secret = rec.secrets[n-1].value
	}
	return c
}

func (c OAuthClient) clone() OAuthClient {
	c.AllowedGrants = slices.Clone(c.AllowedGrants)
	c.AllowedScopes = slices.Clone(c.AllowedScopes)
	c.AllowedOrigins = slices.Clone(c.AllowedOrigins)
	c.RedirectURIs = slices.Clone(c.RedirectURIs)
	c.AllowedAuthMethods = slices.Clone(c.AllowedAuthMethods)
	c.PublicKeys = slices.Clone(c.PublicKeys)
	return c
}

// hintFor names a secret by its last characters, lengthening the hint until
// it differs from the hints of existing secrets.
func hintFor(secret string, existing []clientSecret) string {
	for n := min(secretHintLength, len(secret)); ; n++ {
		hint := secret[len(secret)-n:]
		if n >= len(secret) || !slices.ContainsFunc(existing, func(s clientSecret) bool { return s.hint == hint }) {
			return hint
		}
	}
}

// authenticateLocked returns the client if id and secret match one of its
// secrets and it may authenticate with a secret, comparing in constant time
// like a real server should.
func (t *Tenant) authenticateLocked(id, secret string) (*clientRecord, bool) {
	c, ok := t.clients[id]
	if !ok || id == "" || secret == "" || !slices.Contains(c.AllowedAuthMethods, authClientSecret) {
		return nil, false
	}
	match := 0
	for _, s := range c.secrets {
		match |= subtle.ConstantTimeCompare([]byte(s.value), []byte(secret))
	}
	if match != 1 {
		return nil, false
	}
	return c, true
}
