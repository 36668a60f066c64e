package qlik

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// maxPages bounds how many pages a list call follows through links.next: at
// 100 entries a page that is 10,000 users or clients, far more than a lookup
// should ever need, and a hard stop for a tenant whose cursors go round in
// circles.
const maxPages = 100

// Endpoint names of the admin APIs, as they appear in *Error.Endpoint.
const (
	endpointUsers         = "users"
	endpointUsersMe       = "users-me"
	endpointOAuthClients  = "oauth-clients"
	endpointClientSecrets = "oauth-client-secrets"
	endpointConsent       = "oauth-client-consent"
)

// QuoteFilterValue returns s as a SCIM filter string literal (RFC 7644
// section 3.4.2.2: a JSON string), quotes and backslashes escaped, for
// building filters such as `email eq ` + QuoteFilterValue(email).
func QuoteFilterValue(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // "<" is fine in a filter; \u003c would only confuse logs
	_ = enc.Encode(s)        // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}

// Admin calls the tenant's admin APIs (users, groups, oauth-clients and their
// secrets and consent) with a token from its TokenSource on every call, so
// callers pass no bearer. Most calls need a token with scope admin_classic:
// an admin client's, from ClientCredentials wrapped in ReuseTokenSource. It
// is safe for concurrent use when its source is.
type Admin struct {
	c  *Client
	ts TokenSource
}

// Admin returns c's admin APIs authenticated by tokens from ts.
func (c *Client) Admin(ts TokenSource) *Admin {
	return &Admin{c: c, ts: ts}
}

// bearer gets a token from the source and checks it can go in an
// Authorization header. Called after the arguments are checked, so a bad
// request costs no token.
func (a *Admin) bearer(ctx context.Context) (string, error) {
	if a.ts == nil {
		return "", fmt.Errorf("%w: no token source", ErrInvalidRequest)
	}
	tok, err := a.ts.Token(ctx)
	if err != nil {
		return "", fmt.Errorf("qlik: admin token: %w", err)
	}
	if tok == nil {
		return "", errNoToken
	}
	if err := checkBearer(tok.AccessToken); err != nil {
		return "", err
	}
	return tok.AccessToken, nil
}

func checkBearer(bearer string) error {
	if strings.TrimSpace(bearer) == "" {
		return fmt.Errorf("%w: bearer token is empty", ErrInvalidRequest)
	}
	if strings.ContainsAny(bearer, "\r\n") {
		return fmt.Errorf("%w: bearer token contains a line break", ErrInvalidRequest)
	}
	return nil
}

// checkID refuses an empty path segment, and "." and "..", which
// url.PathEscape leaves alone and a server would resolve to another path.
func checkID(what, id string) error {
	switch id {
	case "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidRequest, what)
	case ".", "..":
		return fmt.Errorf("%w: %s is a dot segment", ErrInvalidRequest, what)
	}
	return nil
}

// apiURL joins the tenant base, a path and an optional query.
func (c *Client) apiURL(path string, query url.Values) string {
	if len(query) == 0 {
		return c.base + path
	}
	return c.base + path + "?" + query.Encode()
}

// getJSON GETs url with bearer and decodes the 2xx body into v.
func (c *Client) getJSON(ctx context.Context, endpoint, bearer, u string, v any) error {
	_, body, err := c.send(ctx, request{endpoint: endpoint, method: http.MethodGet, url: u, bearer: bearer})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return malformed(endpoint, "body is not the expected JSON")
	}
	return nil
}

// listPage is one page of a Qlik list answer.
type listPage[T any] struct {
	Data  []T `json:"data"`
	Links struct {
		Next *struct {
			Href string `json:"href"`
		} `json:"next"`
	} `json:"links"`
}

// listAll GETs path with query and follows links.next until the last page,
// at most maxPages pages. Next links are resolved against the tenant and must
// stay on it and on path: a link elsewhere would carry the admin token away.
func listAll[T any](ctx context.Context, c *Client, endpoint, bearer, path string, query url.Values) ([]T, error) {
	u := c.apiURL(path, query)
	seen := map[string]bool{u: true}
	var all []T
	for range maxPages {
		var p listPage[T]
		if err := c.getJSON(ctx, endpoint, bearer, u, &p); err != nil {
			return nil, err
		}
		all = append(all, p.Data...)
		if p.Links.Next == nil || p.Links.Next.Href == "" {
			return all, nil
		}
		next, reason := c.resolveNext(path, p.Links.Next.Href)
		if reason != "" {
			return nil, malformed(endpoint, reason)
		}
		if seen[next] {
			return nil, malformed(endpoint, "links.next repeats an earlier page")
		}
		seen[next] = true
		u = next
	}
	return nil, fmt.Errorf("%w: %s: more than %d pages", ErrTooManyPages, endpoint, maxPages)
}

// resolveNext resolves a links.next href, absolute or relative, against the
// tenant base URL and returns it, or a reason to refuse it. Reasons never
// quote the href.
func (c *Client) resolveNext(path, href string) (string, string) {
	base, err := url.Parse(c.base + path)
	if err != nil {
		return "", "invalid tenant URL" // New validated it; unreachable
	}
	u, err := base.Parse(href)
	if err != nil {
		return "", "links.next is not a valid URL"
	}
	switch {
	case !strings.EqualFold(u.Scheme, base.Scheme) || !strings.EqualFold(u.Host, base.Host):
		return "", "links.next points to another host"
	case u.User != nil:
		return "", "links.next contains userinfo"
	case u.Path != base.Path:
		return "", "links.next points to another endpoint"
	}
	u.Fragment, u.RawFragment = "", ""
	u.Scheme, u.Host = base.Scheme, base.Host // keep the tenant's spelling
	return u.String(), ""
}
