package qlik

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// TokenSource supplies access tokens, as golang.org/x/oauth2's TokenSource
// does, with a context because getting one may mean a call to the tenant.
// Implementations must be safe for concurrent use and must not put a token
// in an error.
type TokenSource interface {
	Token(ctx context.Context) (*Token, error)
}

// StaticTokenSource returns a TokenSource that always returns a copy of t,
// for a token the caller got elsewhere (an admin token from a file). A nil t
// makes Token fail with ErrInvalidRequest.
func StaticTokenSource(t *Token) TokenSource {
	return staticTokenSource{t}
}

type staticTokenSource struct{ t *Token }

func (s staticTokenSource) Token(context.Context) (*Token, error) {
	if s.t == nil {
		return nil, fmt.Errorf("%w: no token", ErrInvalidRequest)
	}
	t := *s.t
	return &t, nil
}

// ClientCredentials returns a TokenSource that mints a new token with the
// client_credentials grant (ClientCredentialsToken) on every call, for the
// client itself (its bot user) narrowed to scope. Wrap it in
// ReuseTokenSource to keep the token until shortly before it expires.
func (c *Client) ClientCredentials(creds Credentials, scope string) TokenSource {
	return &clientCredentials{c: c, creds: creds, scope: scope}
}

type clientCredentials struct {
	c     *Client
	creds Credentials
	scope string
}

func (s *clientCredentials) Token(ctx context.Context) (*Token, error) {
	return s.c.ClientCredentialsToken(ctx, s.creds, s.scope)
}

// ReuseTokenSource returns a TokenSource that keeps the last token src gave
// until early before its ExpiresAt by the clock now, then asks src again. A
// token with a zero ExpiresAt never expires. One call at a time reaches src;
// the others wait for it (or for their context) and share its token. A
// failed call is not remembered: the next caller asks src again. A negative
// early counts as zero. It panics when src or now is nil, a mistake in
// wiring rather than a runtime condition.
func ReuseTokenSource(src TokenSource, early time.Duration, now func() time.Time) TokenSource {
	if src == nil || now == nil {
		panic("qlik: ReuseTokenSource needs a source and a clock")
	}
	return &reuseTokenSource{src: src, early: max(early, 0), now: now, fetch: make(chan struct{}, 1)}
}

type reuseTokenSource struct {
	src   TokenSource
	early time.Duration
	now   func() time.Time
	// fetch holds one value while a call to src is under way. A channel
	// rather than a mutex so a waiter can give up when its context ends.
	fetch chan struct{}

	mu  sync.Mutex
	tok *Token
}

func (s *reuseTokenSource) Token(ctx context.Context) (*Token, error) {
	if t := s.reusable(); t != nil {
		return t, nil
	}
	select {
	case s.fetch <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("qlik: waiting for a token: %w", context.Cause(ctx))
	}
	defer func() { <-s.fetch }()
	if t := s.reusable(); t != nil { // another caller fetched while this one waited
		return t, nil
	}
	t, err := s.src.Token(ctx)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, errNoToken
	}
	kept := *t
	s.mu.Lock()
	s.tok = &kept
	s.mu.Unlock()
	return t, nil
}

// errNoToken is what a source that returns neither a token nor an error
// amounts to.
var errNoToken = errors.New("qlik: token source returned no token")

// reusable returns a copy of the kept token while it has more than early
// left, else nil. Copies, so no caller can change what the others get.
func (s *reuseTokenSource) reusable() *Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok == nil {
		return nil
	}
	if !s.tok.ExpiresAt.IsZero() && s.tok.ExpiresAt.Sub(s.now()) <= s.early {
		return nil
	}
	t := *s.tok
	return &t
}
