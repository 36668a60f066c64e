package qliktest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// adminHarness is a harness plus an admin client and its token.
type adminHarness struct {
	*harness
	admin  qliktest.OAuthClient
	bearer string // client_credentials, scope admin_classic
}

func newAdminHarness(t *testing.T) *adminHarness {
	t.Helper()
	h := newHarness(t)
	admin := h.tn.AddAdminClient()
	return &adminHarness{harness: h, admin: admin, bearer: h.ccToken(admin, "")}
}

// ccToken issues a client_credentials token for c, narrowed to scope.
func (h *harness) ccToken(c qliktest.OAuthClient, scope string) string {
	h.t.Helper()
	return h.token(h.postJSON("/oauth/token", map[string]string{
		"client_id": c.ID, "client_secret": c.Secret, "grant_type": "client_credentials", "scope": scope,
	})).AccessToken
}

// api sends body (nil: none; string: raw JSON; else marshalled) with a
// bearer token ("" sends no Authorization).
func (h *harness) api(method, path, token string, body any, header http.Header) response {
	h.t.Helper()
	hdr := http.Header{}
	for k, v := range header {
		hdr[k] = v
	}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	var s, ct string
	switch b := body.(type) {
	case nil:
	case string:
		s, ct = b, "application/json"
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		s, ct = string(raw), "application/json"
	}
	return h.mustDo(method, path, ct, s, hdr)
}

// decodeAs checks r has status and decodes its body into a T.
func decodeAs[T any](t *testing.T, r response, status int) T {
	t.Helper()
	var v T
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("body: %v: %s", err, r.body)
	}
	return v
}

type userList struct {
	Data  []qliktest.User `json:"data"`
	Links struct {
		Self struct{ Href string }
		Next *struct{ Href string }
		Prev *struct{ Href string }
	} `json:"links"`
}

func (l userList) subjects() []string {
	var s []string
	for _, u := range l.Data {
		s = append(s, u.Subject)
	}
	return s
}

func usersQuery(kv ...string) string {
	q := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return "/api/v1/users?" + q.Encode()
}

func TestUsersFilter(t *testing.T) {
	h := newAdminHarness(t)
	h.tn.AddUser(qliktest.User{Subject: "auth0|bob", Email: "Bob@Example.com", Name: "Bob"})
	h.tn.AddUser(qliktest.User{Subject: `odd|"q"\b`, Email: `we"ird\@example.com`, Name: "Odd"})
	h.tn.AddUser(qliktest.User{Subject: "auth0|off", Email: "off@example.org", Name: "Off", Status: qliktest.StatusDisabled})
	tests := []struct {
		filter string
		want   []string // subjects in creation order
	}{
		{`email eq "ada@example.com"`, []string{"auth0|ada"}},
		{`email eq "BOB@example.COM"`, []string{"auth0|bob"}}, // case-insensitive, as Qlik documents
		{`EMAIL EQ "bob@example.com"`, []string{"auth0|bob"}},
		{`subject eq "auth0|ada"`, []string{"auth0|ada"}},
		{`id eq "` + h.user.ID + `"`, []string{"auth0|ada"}},
		{`email eq "we\"ird\\@example.com"`, []string{`odd|"q"\b`}},
		{`subject eq "odd|\"q\"\\b"`, []string{`odd|"q"\b`}},
		{`email eq "\" or email co \""`, nil}, // an injection attempt is one literal
		{`email eq "nobody@example.com"`, nil},
		{`email co "example.com"`, []string{"auth0|ada", "auth0|bob", `odd|"q"\b`}},
		{`name co "o" and (status eq "active" or status eq "disabled")`, []string{`qlikbot\` + h.admin.ID, "auth0|bob", `odd|"q"\b`, "auth0|off"}},
		{`subject co "QLIKBOT"`, []string{`qlikbot\` + h.admin.ID}},
		{`email co ".org" and (status eq "disabled")`, []string{"auth0|off"}},
		{`(name eq "Ada" or name eq "Bob") and (status eq "active")`, []string{"auth0|ada", "auth0|bob"}},
		{`name eq "Ada" or name eq "Bob" and (status eq "disabled")`, []string{"auth0|ada"}}, // and binds tighter
		{`email co "example" and (status eq "active" or status eq "invited")`, []string{"auth0|ada", "auth0|bob", `odd|"q"\b`}},
		{`status eq "disabled"`, []string{"auth0|off"}}, // alone it needs no group
		{`STATUS EQ "DISABLED"`, []string{"auth0|off"}},
		{`email eq "caf\u00e9"`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.filter, func(t *testing.T) {
			l := decodeAs[userList](t, h.api(http.MethodGet, usersQuery("filter", tt.filter), h.bearer, nil, nil), 200)
			if got := l.subjects(); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}

	bad := []string{
		`email eq ada@example.com`,   // unquoted
		`email eq "ada`,              // unterminated
		`password eq "x"`,            // not filterable
		`email gt "a"`,               // operator not supported
		`email eq "a" extra`,         // trailing
		`(email eq "a"`,              // missing )
		`not email eq "a"`,           // not needs (
		`email eq "\x"`,              // invalid escape
		`and`,                        // nothing to compare
		`email eq "a" or`,            // dangling or
		`email eq "a" and ) or (`,    // stray )
		`"email" eq "a"`,             // quoted attribute
		`email eq "a" or email eq 1`, // number
		// Outside the users grammar (the reference's: eq, co on three attributes).
		`email sw "ada"`,
		`email ew ".org"`,
		`email pr`,
		`status ne "active"`,
		`not (email eq "a")`,
		`id co "a"`,
		`status co "act"`,
		`email eq "a" and status eq "active"`, // status term not grouped
	}
	for _, f := range bad {
		t.Run("bad "+f, func(t *testing.T) {
			wantError(t, h.api(http.MethodGet, usersQuery("filter", f), h.bearer, nil, nil), 400, "USERS-1")
		})
	}
}

func TestUsersPagination(t *testing.T) {
	h := newAdminHarness(t)
	for i := range 24 {
		h.tn.AddUser(qliktest.User{Subject: fmt.Sprintf("p|%02d", i), Email: fmt.Sprintf("p%02d@example.com", i)})
	}
	filter := `subject co "p|"`
	// Default limit is 20; follow next links to the end, then prev back.
	var got []string
	path := usersQuery("filter", filter)
	var pages []userList
	for path != "" {
		l := decodeAs[userList](t, h.api(http.MethodGet, path, h.bearer, nil, nil), 200)
		pages = append(pages, l)
		got = append(got, l.subjects()...)
		path = ""
		if l.Links.Next != nil {
			u, err := url.Parse(l.Links.Next.Href)
			if err != nil || u.Scheme != "http" || u.Host != strings.TrimPrefix(h.tn.URL(), "http://") {
				t.Fatalf("next href %q is not absolute on the tenant", l.Links.Next.Href)
			}
			path = u.RequestURI()
		}
	}
	if len(pages) != 2 || len(pages[0].Data) != 20 || len(pages[1].Data) != 4 {
		t.Fatalf("pages of %d", len(pages))
	}
	var want []string
	for i := range 24 {
		want = append(want, fmt.Sprintf("p|%02d", i))
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q", got)
	}
	if pages[0].Links.Prev != nil || pages[1].Links.Prev == nil {
		t.Fatalf("prev links: %+v %+v", pages[0].Links.Prev, pages[1].Links.Prev)
	}
	if !strings.HasSuffix(pages[0].Links.Self.Href, usersQuery("filter", filter)) {
		t.Errorf("self %q", pages[0].Links.Self.Href)
	}
	u, _ := url.Parse(pages[1].Links.Prev.Href)
	back := decodeAs[userList](t, h.api(http.MethodGet, u.RequestURI(), h.bearer, nil, nil), 200)
	if !slices.Equal(back.subjects(), want[:20]) {
		t.Errorf("prev page %q", back.subjects())
	}

	l := decodeAs[userList](t, h.api(http.MethodGet, usersQuery("filter", filter, "limit", "5", "sort", "-subject"), h.bearer, nil, nil), 200)
	if got := l.subjects(); !slices.Equal(got, []string{"p|23", "p|22", "p|21", "p|20", "p|19"}) {
		t.Errorf("sorted page %q", got)
	}

	// A cursor stays valid when users are added elsewhere in the list.
	next, _ := url.Parse(pages[0].Links.Next.Href)
	h.tn.AddUser(qliktest.User{Subject: "p|00a"})
	l = decodeAs[userList](t, h.api(http.MethodGet, next.RequestURI(), h.bearer, nil, nil), 200)
	if got := l.subjects(); len(got) != 5 || got[0] != "p|20" {
		t.Errorf("after an insert: %q", got)
	}

	for _, q := range []string{
		usersQuery("limit", "0"), usersQuery("limit", "101"), usersQuery("limit", "x"),
		usersQuery("next", "!!"), usersQuery("next", "bm9ib2R5"), usersQuery("prev", "bm9ib2R5"),
		usersQuery("next", "bm9ib2R5", "prev", "bm9ib2R5"), usersQuery("sort", "password"),
	} {
		t.Run(q, func(t *testing.T) { wantError(t, h.api(http.MethodGet, q, h.bearer, nil, nil), 400, "USERS-2") })
	}
}

func TestCreateUser(t *testing.T) {
	h := newAdminHarness(t)
	r := h.api(http.MethodPost, "/api/v1/users", h.bearer,
		map[string]string{"name": "Grace", "email": "grace@example.com", "subject": "auth0|grace", "status": "active"}, nil)
	u := decodeAs[qliktest.User](t, r, 201)
	if len(u.ID) != 24 || u.Subject != "auth0|grace" || u.Email != "grace@example.com" || u.Name != "Grace" || u.Status != "active" {
		t.Fatalf("created %+v", u)
	}
	// The new user can be impersonated at once and found by the API.
	tok := h.token(h.postJSON("/oauth/token", h.impersonate(map[string]any{
		"user_lookup": map[string]string{"field": "subject", "value": "auth0|grace"}}))).AccessToken
	if got, err := h.tn.TokenUser(tok); err != nil || got != u {
		t.Errorf("TokenUser = %+v, %v", got, err)
	}
	l := decodeAs[userList](t, h.api(http.MethodGet, usersQuery("filter", `email eq "grace@example.com"`), h.bearer, nil, nil), 200)
	if len(l.Data) != 1 || l.Data[0] != u {
		t.Errorf("listed %+v", l.Data)
	}
	inv := decodeAs[qliktest.User](t, h.api(http.MethodPost, "/api/v1/users", h.bearer, `{"subject":"auth0|inv","status":"invited"}`, nil), 201)
	if inv.Status != "invited" {
		t.Errorf("status %q", inv.Status)
	}

	tests := []struct {
		name   string
		body   any
		ct     string
		status int
	}{
		{"duplicate subject", `{"subject":"auth0|grace"}`, "", 409},
		{"no subject", `{"email":"x@example.com"}`, "", 400},
		{"blank subject", `{"subject":"  "}`, "", 400},
		{"bad status", `{"subject":"auth0|x","status":"deleted"}`, "", 400},
		{"unknown field", `{"subject":"auth0|x","emial":"x"}`, "", 400},
		{"wrong type", `{"subject":7}`, "", 400},
		{"not JSON", `subject=x`, "", 400},
		{"trailing data", `{"subject":"auth0|x"} {}`, "", 400},
		{"form", `subject=x`, "application/x-www-form-urlencoded", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr http.Header
			r := h.api(http.MethodPost, "/api/v1/users", h.bearer, tt.body, hdr)
			if tt.ct != "" {
				r = h.mustDo(http.MethodPost, "/api/v1/users", tt.ct, tt.body.(string), http.Header{"Authorization": {"Bearer " + h.bearer}})
			}
			code := "USERS-2"
			if tt.status == 409 {
				code = "USERS-9"
			}
			wantError(t, r, tt.status, code)
		})
	}
	if _, err := h.tn.TokenUser(tok); err != nil {
		t.Error(err)
	}
}

func TestAdminAuthorization(t *testing.T) {
	h := newAdminHarness(t)
	usersAdmin := h.tn.AddClient(qliktest.OAuthClient{AllowedGrants: []string{"client_credentials"}, AllowedScopes: []string{"admin.users"}})
	usersToken := h.ccToken(usersAdmin, "")
	plain := h.ccToken(h.client, "") // user_default only
	revoked := h.ccToken(h.admin, "")
	h.tn.RevokeToken(revoked)
	foreign := newAdminHarness(t).bearer

	id := h.client.ID
	endpoints := []struct {
		method, path string
		body         any
		usersAPI     bool
	}{
		{http.MethodGet, "/api/v1/users", nil, true},
		{http.MethodPost, "/api/v1/users", `{"subject":"auth0|authz"}`, true},
		{http.MethodGet, "/api/v1/oauth-clients", nil, false},
		{http.MethodPost, "/api/v1/oauth-clients", `{"appType":"web","clientName":"x"}`, false},
		{http.MethodGet, "/api/v1/oauth-clients/" + id, nil, false},
		{http.MethodPatch, "/api/v1/oauth-clients/" + id, `[{"op":"replace","path":"/description","value":"x"}]`, false},
		{http.MethodDelete, "/api/v1/oauth-clients/" + id, nil, false},
		{http.MethodPost, "/api/v1/oauth-clients/" + id + "/client-secrets", nil, false},
		{http.MethodDelete, "/api/v1/oauth-clients/" + id + "/client-secrets/abc", nil, false},
		{http.MethodGet, "/api/v1/oauth-clients/" + id + "/connection-configs/me", nil, false},
		{http.MethodPatch, "/api/v1/oauth-clients/" + id + "/connection-configs/me", `[{"op":"replace","path":"/consentMethod","value":"trusted"}]`, false},
	}
	for _, ep := range endpoints {
		tokens := []struct {
			name, token string
			status      int
		}{
			{"none", "", 401},
			{"garbage", "abc.def.ghi", 401},
			{"revoked", revoked, 401},
			{"other tenant", foreign, 401},
			{"user_default", plain, 403},
		}
		if !ep.usersAPI {
			tokens = append(tokens, struct {
				name, token string
				status      int
			}{"admin.users", usersToken, 403})
		}
		for _, tk := range tokens {
			t.Run(ep.method+" "+ep.path+" "+tk.name, func(t *testing.T) {
				wantError(t, h.api(ep.method, ep.path, tk.token, ep.body, nil), tk.status, fmt.Sprintf("HTTP-%d", tk.status))
			})
		}
	}
	// admin.users is enough for the users API.
	decodeAs[userList](t, h.api(http.MethodGet, "/api/v1/users", usersToken, nil, nil), 200)
	decodeAs[qliktest.User](t, h.api(http.MethodPost, "/api/v1/users", usersToken, `{"subject":"auth0|viausers"}`, nil), 201)
	// Refused calls changed nothing: the client is still there, with its description.
	if c, ok := h.tn.OAuthClient(id); !ok || c.Description != "" {
		t.Errorf("client after refused calls: %+v, %v", c, ok)
	}
	// /users/me needs a valid token but no admin scope.
	if r := h.usersMe(plain); r.status != 200 {
		t.Errorf("/users/me with user_default: %d", r.status)
	}
}
