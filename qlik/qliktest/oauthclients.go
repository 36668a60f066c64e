package qliktest

import (
	"bytes"
	"cmp"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Page sizes of GET /api/v1/oauth-clients.
const (
	clientsDefaultLimit = 10
	clientsMaxLimit     = 100
)

// appTypes are the values appType may take; it cannot change after creation.
var appTypes = []string{appTypeWeb, "native", "spa", "anonymous-embed"}

// knownScopes are the scopes a client may be allowed; others are 400. A
// representative subset of Qlik's, enough to catch typos.
var knownScopes = []string{
	"user_default", scopeAdminClassic, scopeAdminUsers, "admin.apps", "admin.apps:export",
	"admin.automations", "admin.spaces", "apps", "apps:read", "apps:export", "automations",
	"automl-deployments", "automl-experiments", "identity.email", "identity.name",
	"identity.picture", "identity.subject", "offline_access", "openid", "profile", "email",
	"reports", "spaces.data", "spaces.managed", "spaces.shared", "mobile",
}

// clientBody is the create body; absent and empty fields mean the same.
type clientBody struct {
	AppType            string          `json:"appType"`
	ClientName         string          `json:"clientName"`
	Description        string          `json:"description"`
	ClientURI          string          `json:"clientUri"`
	LogoURI            string          `json:"logoUri"`
	RedirectURIs       []string        `json:"redirectUris"`
	AllowedScopes      []string        `json:"allowedScopes"`
	AllowedOrigins     []string        `json:"allowedOrigins"`
	AllowedGrantTypes  []string        `json:"allowedGrantTypes"`
	AllowedAuthMethods []string        `json:"allowedAuthMethods"`
	JWKSURI            string          `json:"jwksUri"`
	PublicKeys         json.RawMessage `json:"publicKeys"`
	ConnectionConfig   *struct {
		ConsentMethod string `json:"consentMethod"`
	} `json:"connectionConfig"`
}

// clientView is a client as the API shows it. ClientSecret appears only in
// the answer to create.
type clientView struct {
	ClientID           string          `json:"clientId"`
	ClientName         string          `json:"clientName"`
	Description        string          `json:"description,omitempty"`
	AppType            string          `json:"appType"`
	AllowedScopes      []string        `json:"allowedScopes"`
	AllowedGrantTypes  []string        `json:"allowedGrantTypes"`
	AllowedOrigins     []string        `json:"allowedOrigins"`
	AllowedAuthMethods []string        `json:"allowedAuthMethods"`
	RedirectURIs       []string        `json:"redirectUris"`
	ClientURI          string          `json:"clientUri,omitempty"`
	LogoURI            string          `json:"logoUri,omitempty"`
	JWKSURI            string          `json:"jwksUri,omitempty"`
	PublicKeys         json.RawMessage `json:"publicKeys,omitempty"`
	OwnerID            string          `json:"ownerId,omitempty"`
	CreatedAt          string          `json:"createdAt"`
	UpdatedAt          string          `json:"updatedAt"`
	ClientSecret       string          `json:"clientSecret,omitempty"`
	ClientSecretHint   string          `json:"clientSecretHint,omitempty"`
	ClientSecrets      []secretView    `json:"clientSecrets"`
	ConnectionConfig   struct {
		ConsentMethod string `json:"consentMethod"`
	} `json:"connectionConfig"`
}

type secretView struct {
	Hint      string `json:"hint"`
	CreatedAt string `json:"createdAt"`
	CreatedBy string `json:"createdBy,omitempty"`
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (rec *clientRecord) apiView() clientView {
	v := clientView{
		ClientID: rec.ID, ClientName: rec.Name, Description: rec.Description, AppType: rec.AppType,
		AllowedScopes: nonNil(slices.Clone(rec.AllowedScopes)), AllowedGrantTypes: nonNil(slices.Clone(rec.AllowedGrants)),
		AllowedOrigins: nonNil(slices.Clone(rec.AllowedOrigins)), AllowedAuthMethods: nonNil(slices.Clone(rec.AllowedAuthMethods)),
		RedirectURIs: nonNil(slices.Clone(rec.RedirectURIs)), ClientURI: rec.ClientURI, LogoURI: rec.LogoURI,
		JWKSURI: rec.jwksURI, PublicKeys: rec.publicKeys, OwnerID: rec.OwnerID,
		CreatedAt: timestamp(rec.CreatedAt), UpdatedAt: timestamp(rec.updatedAt),
		ClientSecrets: []secretView{},
	}
	for _, s := range rec.secrets {
		v.ClientSecrets = append(v.ClientSecrets, secretView{s.hint, timestamp(s.createdAt), s.createdBy})
	}
	if n := len(rec.secrets); n > 0 {
		v.ClientSecretHint = rec.secrets[n-1].hint
	}
	v.ConnectionConfig.ConsentMethod = rec.ConsentMethod
	return v
}

func (rec *clientRecord) attr(name string) string {
	switch name {
	case "clientId":
		return rec.ID
	case "clientName":
		return rec.Name
	case "appType":
		return rec.AppType
	}
	return ""
}

// handleListClients answers GET /api/v1/oauth-clients: filter (SCIM on
// clientName, clientId, appType), sort, limit, next/prev.
func (t *Tenant) handleListClients(w http.ResponseWriter, r *http.Request) {
	if _, apiErr := t.authorize(r, scopeAdminClassic); apiErr != nil {
		apiErr.write(w)
		return
	}
	q := r.URL.Query()
	filter, err := parseFilter(q.Get("filter"), "clientName", "clientId", "appType")
	if err != nil {
		adminError(http.StatusBadRequest, "Invalid filter: "+err.Error()+".").write(w)
		return
	}
	field, desc, apiErr := sortSpec(q.Get("sort"), "clientId", "clientName", "appType", "tenantId", "createdAt", "updatedAt")
	if apiErr != nil {
		apiErr.write(w)
		return
	}
	pg, apiErr := readPage(q, clientsDefaultLimit, clientsMaxLimit)
	if apiErr != nil {
		apiErr.write(w)
		return
	}

	type item struct {
		view clientView
		seq  int64
	}
	t.mu.Lock()
	items := make([]item, 0, len(t.clients))
	for _, rec := range t.clients {
		if filter == nil || filter.match(rec.attr) {
			items = append(items, item{rec.apiView(), rec.seq})
		}
	}
	t.mu.Unlock()

	key := func(v clientView) string {
		switch field {
		case "clientId":
			return v.ClientID
		case "clientName":
			return strings.ToLower(v.ClientName)
		case "appType":
			return v.AppType
		case "updatedAt":
			return v.UpdatedAt
		}
		return "" // createdAt, tenantId and the default: creation order
	}
	slices.SortFunc(items, func(a, b item) int {
		c := cmp.Or(strings.Compare(key(a.view), key(b.view)), cmp.Compare(a.seq, b.seq))
		if desc {
			return -c
		}
		return c
	})
	out, next, prev, apiErr := paginate(items, func(it item) string { return it.view.ClientID }, pg)
	if apiErr != nil {
		apiErr.write(w)
		return
	}
	data := make([]clientView, len(out))
	for i, it := range out {
		data[i] = it.view
	}
	writeJSON(w, http.StatusOK, struct {
		Data  []clientView `json:"data"`
		Links links        `json:"links"`
	}{data, pageLinks(r, next, prev)})
}

// handleCreateClient answers POST /api/v1/oauth-clients with 201 and the
// client, including its secret, the only time the tenant shows it. Web
// clients get a secret unless allowedAuthMethods leaves out client_secret;
// other app types are public and get none. Consent starts "required" unless
// connectionConfig.consentMethod says otherwise.
func (t *Tenant) handleCreateClient(w http.ResponseWriter, r *http.Request) {
	claims, apiErr := t.authorize(r, scopeAdminClassic)
	if apiErr != nil {
		apiErr.write(w)
		return
	}
	var b clientBody
	if apiErr := decodeJSON(r, &b, "application/json"); apiErr != nil {
		apiErr.write(w)
		return
	}
	now := t.now()
	rec := &clientRecord{OAuthClient: OAuthClient{
		ID: randomHex(16), Name: b.ClientName, AppType: b.AppType, Description: b.Description,
		ClientURI: b.ClientURI, LogoURI: b.LogoURI, RedirectURIs: nonNil(b.RedirectURIs),
		AllowedScopes: nonNil(b.AllowedScopes), AllowedOrigins: nonNil(b.AllowedOrigins),
		AllowedGrants: nonNil(b.AllowedGrantTypes), AllowedAuthMethods: nonNil(b.AllowedAuthMethods),
		ConsentMethod: consentRequired, OwnerID: claims.Subject, CreatedAt: now,
	}, jwksURI: b.JWKSURI, publicKeys: b.PublicKeys, updatedAt: now}
	if b.ConnectionConfig != nil && b.ConnectionConfig.ConsentMethod != "" {
		rec.ConsentMethod = b.ConnectionConfig.ConsentMethod
	}
	if rec.AppType == appTypeWeb && len(rec.AllowedAuthMethods) == 0 {
		rec.AllowedAuthMethods = []string{authClientSecret}
	}
	if apiErr := rec.validate(); apiErr != nil {
		apiErr.write(w)
		return
	}
	var secret string
	if rec.AppType == appTypeWeb && slices.Contains(rec.AllowedAuthMethods, authClientSecret) {
		secret = rec.addSecret(claims.Subject, now)
	}
	t.mu.Lock()
	t.storeClientLocked(rec)
	v := rec.apiView()
	t.mu.Unlock()
	v.ClientSecret = secret
	writeJSON(w, http.StatusCreated, v)
}

// addSecret makes a new secret and returns its value.
func (rec *clientRecord) addSecret(createdBy string, now time.Time) string {
	v := randomHex(32)
	rec.secrets = append(rec.secrets, clientSecret{value: v, hint: hintFor(v, rec.secrets), createdBy: createdBy, createdAt: now})
	return v
}

// validate checks a client as create and PATCH leave it.
func (rec *clientRecord) validate() *apiError {
	bad := func(detail string) *apiError { return adminError(http.StatusBadRequest, detail) }
	switch {
	case !slices.Contains(appTypes, rec.AppType):
		return bad("appType must be one of " + strings.Join(appTypes, ", ") + ".")
	case strings.TrimSpace(rec.Name) == "":
		return bad("clientName is required.")
	case len(rec.Name) > 256:
		return bad("clientName is longer than 256 characters.")
	case len(rec.AllowedGrants) > 0 && rec.AppType != appTypeWeb:
		return bad("allowedGrantTypes are allowed only for web clients.")
	case rec.ConsentMethod != consentRequired && rec.ConsentMethod != consentTrusted:
		return bad("connectionConfig.consentMethod must be required or trusted.")
	}
	for _, g := range rec.AllowedGrants {
		if g != grantClientCredentials && g != grantImpersonation {
			return bad("allowedGrantTypes holds an unknown grant type.")
		}
	}
	for _, s := range rec.AllowedScopes {
		if !slices.Contains(knownScopes, s) {
			return bad("allowedScopes holds an unknown scope.")
		}
	}
	for _, m := range rec.AllowedAuthMethods {
		if m != authClientSecret && m != authPrivateKeyJWT {
			return bad("allowedAuthMethods must hold client_secret or private_key_jwt.")
		}
	}
	for _, o := range rec.AllowedOrigins {
		if !isOrigin(o) {
			return bad("allowedOrigins must hold origins such as https://app.example.com.")
		}
	}
	for _, u := range rec.RedirectURIs {
		if !isAbsoluteURL(u) {
			return bad("redirectUris must hold absolute URLs.")
		}
	}
	for name, u := range map[string]string{"clientUri": rec.ClientURI, "logoUri": rec.LogoURI, "jwksUri": rec.jwksURI} {
		if u != "" && !isAbsoluteURL(u) {
			return bad(name + " must be an absolute URL.")
		}
	}
	if len(rec.publicKeys) > 0 && !bytes.Equal(rec.publicKeys, []byte("null")) {
		if apiErr := checkPublicKeys(rec.publicKeys); apiErr != nil {
			return apiErr
		}
	}
	return nil
}

func isAbsoluteURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" && u.User == nil
}

// isOrigin accepts scheme://host[:port] with nothing after it.
func isOrigin(s string) bool {
	u, err := url.Parse(s)
	return err == nil && isAbsoluteURL(s) && u.Path == "" && u.RawQuery == "" && u.Fragment == "" && !strings.HasSuffix(s, "?") && !strings.HasSuffix(s, "#")
}

// clientFor authorizes an admin call on the client named in the path and
// runs fn on it under the tenant lock; 404 when there is no such client.
func (t *Tenant) clientFor(w http.ResponseWriter, r *http.Request, fn func(*clientRecord, *accessClaims) (int, any, *apiError)) {
	claims, apiErr := t.authorize(r, scopeAdminClassic)
	if apiErr != nil {
		apiErr.write(w)
		return
	}
	t.mu.Lock()
	rec, ok := t.clients[r.PathValue("id")]
	var (
		status int
		body   any
	)
	if ok {
		status, body, apiErr = fn(rec, claims)
	}
	t.mu.Unlock()
	switch {
	case !ok:
		adminError(http.StatusNotFound, "No OAuth client with this id.").write(w)
	case apiErr != nil:
		apiErr.write(w)
	case body == nil:
		w.WriteHeader(status)
	default:
		writeJSON(w, status, body)
	}
}

// handleGetClient answers GET /api/v1/oauth-clients/{id}.
func (t *Tenant) handleGetClient(w http.ResponseWriter, r *http.Request) {
	t.clientFor(w, r, func(rec *clientRecord, _ *accessClaims) (int, any, *apiError) {
		return http.StatusOK, rec.apiView(), nil
	})
}

// patchOp is one RFC 6902 operation.
type patchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value"`
	From  string          `json:"from"`
}

// handlePatchClient answers PATCH /api/v1/oauth-clients/{id}: a JSON Patch
// array of add, remove and replace on the documented member paths, applied
// all or nothing. add and replace set a member; on an array member, add with
// a single string appends it (the typings allow a string value); remove
// clears it. appType is immutable. 202 {clientSecret} when the patch adds
// client_secret to a web client's allowedAuthMethods, else 204.
func (t *Tenant) handlePatchClient(w http.ResponseWriter, r *http.Request) {
	var ops []patchOp
	if apiErr := decodeJSON(r, &ops, "application/json", "application/json-patch+json"); apiErr != nil {
		// Authorization comes first, as for every admin call.
		if _, authErr := t.authorize(r, scopeAdminClassic); authErr != nil {
			apiErr = authErr
		}
		apiErr.write(w)
		return
	}
	t.clientFor(w, r, func(rec *clientRecord, claims *accessClaims) (int, any, *apiError) {
		next := *rec
		next.OAuthClient = rec.clone()
		next.secrets = slices.Clone(rec.secrets)
		for _, op := range ops {
			if apiErr := next.apply(op); apiErr != nil {
				return 0, nil, apiErr
			}
		}
		if apiErr := next.validate(); apiErr != nil {
			return 0, nil, apiErr
		}
		now := t.now()
		next.updatedAt = now
		var secret string
		if next.AppType == appTypeWeb && !slices.Contains(rec.AllowedAuthMethods, authClientSecret) &&
			slices.Contains(next.AllowedAuthMethods, authClientSecret) {
			if len(next.secrets) >= maxSecretsPerClient {
				return 0, nil, adminError(http.StatusConflict, "The client already has the maximum number of secrets.")
			}
			secret = next.addSecret(claims.Subject, now)
		}
		*rec = next
		if secret != "" {
			return http.StatusAccepted, struct {
				ClientSecret string `json:"clientSecret"`
			}{secret}, nil
		}
		return http.StatusNoContent, nil, nil
	})
}

func (rec *clientRecord) apply(op patchOp) *apiError {
	bad := func(detail string) *apiError { return adminError(http.StatusBadRequest, detail) }
	switch op.Op {
	case "add", "replace", "remove":
	default:
		return bad("op must be add, remove or replace.")
	}
	var str *string
	var list *[]string
	switch op.Path {
	case "/clientName":
		str = &rec.Name
	case "/description":
		str = &rec.Description
	case "/clientUri":
		str = &rec.ClientURI
	case "/logoUri":
		str = &rec.LogoURI
	case "/jwksUri":
		str = &rec.jwksURI
	case "/redirectUris":
		list = &rec.RedirectURIs
	case "/allowedScopes":
		list = &rec.AllowedScopes
	case "/allowedGrantTypes":
		list = &rec.AllowedGrants
	case "/allowedOrigins":
		list = &rec.AllowedOrigins
	case "/allowedAuthMethods":
		list = &rec.AllowedAuthMethods
	case "/publicKeys":
		if op.Op == "remove" {
			rec.publicKeys = nil
			return nil
		}
		if len(op.Value) == 0 {
			return bad("value is required for " + op.Op + ".")
		}
		rec.publicKeys = slices.Clone(op.Value)
		return nil
	case "/appType":
		return bad("appType cannot be changed after creation.")
	default:
		return bad("path is not one a patch may change.")
	}
	if op.Op == "remove" {
		if str != nil {
			*str = ""
		} else {
			*list = []string{}
		}
		return nil
	}
	if len(op.Value) == 0 || bytes.Equal(op.Value, []byte("null")) {
		return bad("value is required for " + op.Op + ".")
	}
	if str != nil {
		if json.Unmarshal(op.Value, str) != nil {
			return bad(op.Path + " takes a string.")
		}
		return nil
	}
	var one string
	if op.Op == "add" && json.Unmarshal(op.Value, &one) == nil {
		*list = append(*list, one)
		return nil
	}
	var all []string
	if json.Unmarshal(op.Value, &all) != nil {
		return bad(op.Path + " takes an array of strings.")
	}
	*list = nonNil(all)
	return nil
}

// handleDeleteClient answers DELETE /api/v1/oauth-clients/{id}, which
// requires the header qlik-confirm-delete to repeat the id (400 otherwise).
func (t *Tenant) handleDeleteClient(w http.ResponseWriter, r *http.Request) {
	t.clientFor(w, r, func(rec *clientRecord, _ *accessClaims) (int, any, *apiError) {
		if r.Header.Get("qlik-confirm-delete") != rec.ID {
			return 0, nil, adminError(http.StatusBadRequest, "The qlik-confirm-delete header must hold the id of the client to delete.")
		}
		delete(t.clients, rec.ID)
		return http.StatusNoContent, nil, nil
	})
}

// handleCreateSecret answers POST .../{id}/client-secrets: 201 with the new
// secret, 409 when the client has 5, 400 for a client that is not web.
func (t *Tenant) handleCreateSecret(w http.ResponseWriter, r *http.Request) {
	t.clientFor(w, r, func(rec *clientRecord, claims *accessClaims) (int, any, *apiError) {
		switch {
		case rec.AppType != appTypeWeb:
			return 0, nil, adminError(http.StatusBadRequest, "Only web clients have client secrets.")
		case len(rec.secrets) >= maxSecretsPerClient:
			return 0, nil, adminError(http.StatusConflict, "The client already has the maximum number of secrets.")
		}
		now := t.now()
		v := rec.addSecret(claims.Subject, now)
		s := rec.secrets[len(rec.secrets)-1]
		return http.StatusCreated, struct {
			ClientID     string `json:"clientId"`
			ClientSecret string `json:"clientSecret"`
			Hint         string `json:"hint"`
			CreatedAt    string `json:"createdAt"`
			CreatedBy    string `json:"createdBy"`
		}{rec.ID, v, s.hint, timestamp(now), s.createdBy}, nil
	})
}

// handleDeleteSecret answers DELETE .../{id}/client-secrets/{hint}: 204, or
// 404 for an unknown hint. The secret stops authenticating at once.
func (t *Tenant) handleDeleteSecret(w http.ResponseWriter, r *http.Request) {
	t.clientFor(w, r, func(rec *clientRecord, _ *accessClaims) (int, any, *apiError) {
		i := slices.IndexFunc(rec.secrets, func(s clientSecret) bool { return s.hint == r.PathValue("hint") })
		if i < 0 {
			return 0, nil, adminError(http.StatusNotFound, "No client secret with this hint.")
		}
		rec.secrets = slices.Delete(rec.secrets, i, i+1)
		return http.StatusNoContent, nil, nil
	})
}

// handleGetConsent answers GET .../{id}/connection-configs/me.
func (t *Tenant) handleGetConsent(w http.ResponseWriter, r *http.Request) {
	t.clientFor(w, r, func(rec *clientRecord, _ *accessClaims) (int, any, *apiError) {
		return http.StatusOK, struct {
			ConsentMethod string `json:"consentMethod"`
		}{rec.ConsentMethod}, nil
	})
}

// handlePatchConsent answers PATCH .../{id}/connection-configs/me, whose body
// is [{"op":"replace","path":"/consentMethod","value":"required"|"trusted"}]:
// 204 with no body.
func (t *Tenant) handlePatchConsent(w http.ResponseWriter, r *http.Request) {
	var ops []patchOp
	apiErr := decodeJSON(r, &ops, "application/json", "application/json-patch+json")
	if apiErr == nil && len(ops) == 0 {
		apiErr = adminError(http.StatusBadRequest, "The patch is empty.")
	}
	if apiErr == nil {
		for _, op := range ops {
			var v string
			if op.Op != "replace" || op.Path != "/consentMethod" || json.Unmarshal(op.Value, &v) != nil ||
				(v != consentRequired && v != consentTrusted) {
				apiErr = adminError(http.StatusBadRequest, `The patch must be [{"op":"replace","path":"/consentMethod","value":"required"|"trusted"}].`)
				break
			}
		}
	}
	if apiErr != nil {
		if _, authErr := t.authorize(r, scopeAdminClassic); authErr != nil {
			apiErr = authErr
		}
		apiErr.write(w)
		return
	}
	t.clientFor(w, r, func(rec *clientRecord, _ *accessClaims) (int, any, *apiError) {
		var v string
		_ = json.Unmarshal(ops[len(ops)-1].Value, &v) // validated above
		rec.ConsentMethod = v
		return http.StatusNoContent, nil, nil
	})
}
