// Package qlik is a client for the parts of the Qlik Cloud REST API the broker
// needs: minting and revoking OAuth access tokens (/oauth/token, /oauth/revoke),
// finding and creating users (/api/v1/users) and managing OAuth clients
// (/api/v1/oauth-clients) through Admin, which takes its bearer from a
// TokenSource (ClientCredentials behind ReuseTokenSource, as
// golang.org/x/oauth2 does). It knows nothing of sessions or caches. Remote
// failures are *Error values; unusable success bodies wrap
// ErrMalformedResponse.
package qlik

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const (
	defaultTimeout      = 10 * time.Second
	defaultMaxBodyBytes = 1 << 20
	defaultUserAgent    = "qlik-token-broker"
	// drainLimit bounds how much of an unread body is discarded to keep the
	// connection reusable; beyond it closing is cheaper than reading.
	drainLimit = 64 << 10
)

// Client talks to one tenant. It is safe for concurrent use.
type Client struct {
	base      string // scheme://host[:port], no trailing slash
	hc        *http.Client
	now       func() time.Time
	maxBody   int64
	userAgent string
}

// Options tune a Client. The zero value is usable.
type Options struct {
	// HTTPClient sends requests; nil means NewHTTPClient(10*time.Second).
	// Whatever is given, the Client never follows redirects: a 307 would
	// replay the client secret to another location.
	HTTPClient *http.Client
	// Now is the clock for expires_in and Retry-After dates; nil means time.Now.
	Now func() time.Time
	// MaxBodyBytes caps every response body read; <= 0 means 1 MiB.
	MaxBodyBytes int64
	// UserAgent is sent on every request; empty means "qlik-token-broker".
	UserAgent string
}

// New returns a Client for the tenant at tenantURL, which must be an absolute
// https URL with no userinfo, query, fragment or path other than "/". Plain
// http is accepted only for loopback hosts (127.0.0.0/8, ::1, localhost), which
// is what the fake tenant in qliktest serves. Errors name the problem but never
// echo the URL, which could hold a password.
func New(tenantURL string, opts Options) (*Client, error) {
	base, err := parseTenantURL(tenantURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:      base,
		now:       opts.Now,
		maxBody:   opts.MaxBodyBytes,
		userAgent: opts.UserAgent,
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.maxBody <= 0 {
		c.maxBody = defaultMaxBodyBytes
	}
	if c.userAgent == "" {
		c.userAgent = defaultUserAgent
	}
	if opts.HTTPClient == nil {
		c.hc = NewHTTPClient(defaultTimeout)
	} else {
		hc := *opts.HTTPClient
		hc.CheckRedirect = refuseRedirect
		c.hc = &hc
	}
	return c, nil
}

func parseTenantURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL; keep only the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("qlik: tenant URL is invalid: %w", err)
	}
	switch {
	case u.Scheme == "":
		return "", errors.New("qlik: tenant URL is not absolute (want https://host)")
	case u.Scheme != "https" && u.Scheme != "http":
		return "", fmt.Errorf("qlik: tenant URL scheme %q is not https", u.Scheme)
	case u.Opaque != "" || u.Host == "":
		return "", errors.New("qlik: tenant URL has no host")
	case u.User != nil:
		return "", errors.New("qlik: tenant URL must not contain userinfo")
	case u.RawQuery != "" || u.ForceQuery:
		return "", errors.New("qlik: tenant URL must not contain a query")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return "", errors.New("qlik: tenant URL must not contain a fragment")
	case u.Path != "" && u.Path != "/":
		return "", errors.New("qlik: tenant URL must not contain a path")
	case u.Scheme == "http" && !isLoopback(u.Hostname()):
		return "", errors.New("qlik: tenant URL must use https (http is allowed only for loopback hosts)")
	}
	return u.Scheme + "://" + u.Host, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// BaseURL returns the tenant URL requests go to, without a trailing slash.
func (c *Client) BaseURL() string { return c.base }

// tokenRequest is the JSON body of /oauth/token.
type tokenRequest struct {
	clientAuth
	GrantType  string      `json:"grant_type"`
	UserLookup *UserLookup `json:"user_lookup,omitempty"`
	Scope      string      `json:"scope,omitempty"`
}

// ImpersonationToken mints a token that acts as user, narrowed to scope
// (space-delimited; empty means the client's whole allow-list).
func (c *Client) ImpersonationToken(ctx context.Context, creds Credentials, user UserLookup, scope string) (*Token, error) {
	if err := creds.validate(); err != nil {
		return nil, err
	}
	if err := user.Validate(); err != nil {
		return nil, err
	}
	auth, err := c.authFor(creds)
	if err != nil {
		return nil, err
	}
	return c.token(ctx, tokenRequest{
		clientAuth: auth,
		GrantType:  GrantImpersonation,
		UserLookup: &user,
		Scope:      scope,
	})
}

// ClientCredentialsToken mints a token for the client itself (its bot user),
// narrowed to scope (empty means the client's whole allow-list).
func (c *Client) ClientCredentialsToken(ctx context.Context, creds Credentials, scope string) (*Token, error) {
	if err := creds.validate(); err != nil {
		return nil, err
	}
	auth, err := c.authFor(creds)
	if err != nil {
		return nil, err
	}
	return c.token(ctx, tokenRequest{
		clientAuth: auth,
		GrantType:  GrantClientCredentials,
		Scope:      scope,
	})
}

func (c *Client) token(ctx context.Context, req tokenRequest) (*Token, error) {
	const endpoint = "token"
	body, err := c.post(ctx, endpoint, "/oauth/token", req)
	if err != nil {
		return nil, err
	}
	tok, reason := parseToken(body, c.now())
	if reason != "" {
		return nil, malformed(endpoint, reason)
	}
	return tok, nil
}

// Revoke revokes accessToken at the tenant. Revoking an unknown or already
// expired token succeeds, as RFC 7009 prescribes.
func (c *Client) Revoke(ctx context.Context, creds Credentials, accessToken string) error {
	if err := creds.validate(); err != nil {
		return err
	}
	if accessToken == "" {
		return fmt.Errorf("%w: access token is empty", ErrInvalidRequest)
	}
	auth, err := c.authFor(creds)
	if err != nil {
		return err
	}
	_, err = c.post(ctx, "revoke", "/oauth/revoke", struct {
		Token         string `json:"token"`
		TokenTypeHint string `json:"token_type_hint"`
		clientAuth
	}{accessToken, "access_token", auth})
	return err
}

// post sends payload as JSON and returns the body of a 2xx answer. Any other
// status becomes an *Error.
func (c *Client) post(ctx context.Context, endpoint, path string, payload any) ([]byte, error) {
	_, body, err := c.send(ctx, request{endpoint: endpoint, method: http.MethodPost, url: c.base + path, body: payload})
	return body, err
}

// request is one call to the tenant.
type request struct {
	endpoint string            // names the call in errors, never a URL
	method   string            // http.MethodGet, ...
	url      string            // absolute, on the tenant
	bearer   string            // sent as Authorization: Bearer when non-empty
	header   map[string]string // extra headers
	body     any               // sent as JSON when non-nil
	location *string           // when set, receives the Location of a 3xx answer
}

// send performs rq and returns the status and body of a 2xx answer. Any other
// status becomes an *Error; bodies are capped at MaxBodyBytes.
func (c *Client) send(ctx context.Context, rq request) (int, []byte, error) {
	var reqBody io.Reader
	if rq.body != nil {
		buf, err := json.Marshal(rq.body)
		if err != nil {
			return 0, nil, fmt.Errorf("qlik: %s: encoding request: %w", rq.endpoint, err)
		}
		reqBody = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, rq.method, rq.url, reqBody)
	if err != nil {
		return 0, nil, fmt.Errorf("qlik: %s: %w", rq.endpoint, stripURL(err))
	}
	req.Header.Set("Accept", "application/json")
	if rq.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", c.userAgent)
	if rq.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+rq.bearer)
	}
	for k, v := range rq.header {
		req.Header.Set(k, v)
	}

	resp, err := c.hc.Do(req)
	if err != nil {
		// *url.Error names method and URL. The URL carries no secrets (New
		// rejects userinfo; queries hold only filters and cursors) but may
		// hold an email in a filter, so keep only the reason.
		return 0, nil, fmt.Errorf("qlik: %s: %w", rq.endpoint, stripURL(err))
	}
	defer drainAndClose(resp.Body)

	body, readErr := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	tooLarge := int64(len(body)) > c.maxBody
	if tooLarge {
		body = body[:c.maxBody]
	}
	if rq.location != nil && resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		*rq.location = resp.Header.Get("Location")
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// The status is the answer; a truncated or broken body only costs the
		// error details.
		return resp.StatusCode, nil, newError(rq.endpoint, resp.StatusCode, resp.Header, body, c.now())
	}
	if readErr != nil {
		return resp.StatusCode, nil, fmt.Errorf("qlik: %s: reading response: %w", rq.endpoint, readErr)
	}
	if tooLarge {
		return resp.StatusCode, nil, malformed(rq.endpoint, fmt.Sprintf("body exceeds %d bytes", c.maxBody))
	}
	return resp.StatusCode, body, nil
}

// stripURL reduces a *url.Error to its cause, keeping errors.Is working for
// context.DeadlineExceeded and friends, and the op so logs still say what failed.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return &opError{op: ue.Op, err: ue.Err}
	}
	return err
}

// opError is a *url.Error without the URL.
type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// Timeout reports whether the cause was a timeout, as *url.Error does, so
// the error still satisfies net.Error.
func (e *opError) Timeout() bool {
	t, ok := e.err.(interface{ Timeout() bool })
	return ok && t.Timeout()
}

// Temporary completes net.Error, as *url.Error does.
func (e *opError) Temporary() bool {
	t, ok := e.err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

func malformed(endpoint, reason string) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformedResponse, endpoint, reason)
}

func drainAndClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, drainLimit)
	_ = body.Close()
}

// NewHTTPClient returns an *http.Client for talking to tenants: its own
// Transport (a clone of http.DefaultTransport) with 5 s dial and TLS handshake
// timeouts, ResponseHeaderTimeout and overall Timeout both set to timeout
// (<= 0 means 10 s), an idle pool sized for one busy host, and no redirects
// (a 3xx comes back as an *Error).
func NewHTTPClient(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 5 * time.Second
	tr.ResponseHeaderTimeout = timeout
	tr.MaxIdleConns = 128
	tr.MaxIdleConnsPerHost = 64
	tr.IdleConnTimeout = 90 * time.Second
	return &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: refuseRedirect,
	}
}

func refuseRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
