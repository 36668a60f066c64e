package session

import (
	"context"
	"crypto"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// jwksSource holds the keys of a remote JWK Set.
//
// Layout: one jwkset HTTP storage refreshes the URL every
// JWKSRefreshInterval into mem (its goroutine ends with the Verifier's
// context); a jwkset HTTP client on top refreshes on an unknown kid, rate
// limited by JWKSUnknownKIDMinWait and never waiting more than jwksWaitMax;
// keyfunc looks keys up by kid and checks the JWK's alg and use.
type jwksSource struct {
	url       string
	client    *http.Client
	closeIdle func()
	mem       *jwkset.MemoryJWKSet
	storage   jwkset.Storage
	kf        jwksKeyfunc
	minWait   time.Duration
	logger    *slog.Logger

	mu        sync.Mutex
	fetching  bool
	lastFetch time.Time // by Config.Now; paces fetches made by Ready
}

func newJWKSSource(ctx context.Context, cfg Config) (*jwksSource, error) {
	client, closeIdle := jwksHTTPClient(cfg.HTTPClient)
	s := &jwksSource{
		url:       cfg.JWKSURL,
		client:    client,
		closeIdle: closeIdle,
		mem:       jwkset.NewMemoryStorage(),
		minWait:   cfg.JWKSUnknownKIDMinWait,
		logger:    cfg.Logger,
		lastFetch: cfg.Now(),
	}
	if closeIdle != nil {
		// Cancelling the Verifier's context is as good as Close.
		context.AfterFunc(ctx, closeIdle)
	}
	// Waits for the first fetch (at most jwksHTTPTimeout) but does not fail
	// on it: Ready reports the missing keys instead.
	httpStore, err := jwkset.NewStorageFromHTTP(cfg.JWKSURL, jwkset.HTTPClientStorageOptions{
		Client:                    client,
		Ctx:                       ctx,
		HTTPTimeout:               jwksHTTPTimeout,
		NoErrorReturnFirstHTTPReq: true,
		RefreshErrorHandler:       s.logRefreshError,
		RefreshInterval:           cfg.JWKSRefreshInterval,
		Storage:                   s.mem,
	})
	if err != nil {
		return nil, errors.Join(ErrInvalidConfig, err)
	}
	s.storage, err = jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs:          map[string]jwkset.Storage{cfg.JWKSURL: httpStore},
		RateLimitWaitMax:  jwksWaitMax,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(cfg.JWKSUnknownKIDMinWait), 1),
	})
	if err != nil {
		return nil, err
	}
	s.kf, err = keyfunc.New(keyfunc.Options{
		Ctx:     ctx,
		Storage: s.storage,
		// A JWK without "use" is a signing key as far as we know; "enc" is not.
		UseWhitelist: []jwkset.USE{jwkset.UseSig, ""},
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *jwksSource) close() {
	if s.closeIdle != nil {
		s.closeIdle()
	}
}

// key returns the verification key(s) for t. With a kid it asks keyfunc
// (which may refresh the set, bounded by jwksWaitMax); without one it offers
// every loaded key that fits alg, without refreshing.
func (s *jwksSource) key(ctx, vctx context.Context, t *jwt.Token, alg string) (any, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(vctx, cancel) // Close aborts a refresh in flight
	defer stop()
	if vctx.Err() != nil {
		cancel() // AfterFunc would cancel asynchronously; no fetch after Close
	}

	if kid, ok := t.Header[jwkset.HeaderKID]; ok {
		if _, ok := kid.(string); !ok {
			return nil, reject(ReasonMalformed, errBadKID)
		}
		key, err := s.kf.KeyfuncCtx(ctx)(t)
		if err != nil {
			return nil, reject(ReasonUnknownKey, err)
		}
		if !keyFitsAlg(key, alg) {
			return nil, reject(ReasonUnknownKey, errKeyAlgMismatch)
		}
		return key, nil
	}
	all, err := s.storage.KeyReadAll(ctx)
	if err != nil {
		return nil, reject(ReasonUnknownKey, err)
	}
	var set jwt.VerificationKeySet
	for _, j := range all {
		if jwkFitsAlg(j, alg) {
			set.Keys = append(set.Keys, publicOf(j.Key()))
		}
	}
	if len(set.Keys) == 0 {
		return nil, reject(ReasonUnknownKey, errNoUsableJWK)
	}
	return set, nil
}

// ready reports whether a loaded key fits one of algs, fetching the set
// once when none does and the last fetch by Ready (or NewVerifier) is at
// least minWait old.
func (s *jwksSource) ready(ctx, vctx context.Context, algs map[string]bool, now func() time.Time) error {
	if s.usable(ctx, algs) {
		return nil
	}
	s.mu.Lock()
	if s.fetching || now().Sub(s.lastFetch) < s.minWait {
		s.mu.Unlock()
		return ErrNotReady
	}
	s.fetching, s.lastFetch = true, now()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.fetching = false
		s.mu.Unlock()
	}()

	ctx, cancel := context.WithTimeout(ctx, jwksWaitMax)
	defer cancel()
	if err := s.fetch(ctx, vctx); err != nil {
		s.logRefreshError(ctx, err)
	}
	if s.usable(ctx, algs) {
		return nil
	}
	return ErrNotReady
}

// fetch reads the set once, now, replacing the loaded keys (so a key
// removed from the set is gone); Close (vctx) aborts it.
func (s *jwksSource) fetch(ctx, vctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(vctx, cancel)
	defer stop()
	// Without RefreshInterval this fetches once into mem (shared with the
	// background refresh) and starts no goroutine.
	_, err := jwkset.NewStorageFromHTTP(s.url, jwkset.HTTPClientStorageOptions{
		Client:      s.client,
		Ctx:         ctx,
		HTTPTimeout: jwksHTTPTimeout,
		Storage:     s.mem,
	})
	return err
}

func (s *jwksSource) usable(ctx context.Context, algs map[string]bool) bool {
	all, err := s.storage.KeyReadAll(ctx)
	if err != nil {
		return false
	}
	for _, j := range all {
		for alg := range algs {
			if jwkFitsAlg(j, alg) {
				return true
			}
		}
	}
	return false
}

func (s *jwksSource) logRefreshError(ctx context.Context, err error) {
	s.logger.LogAttrs(ctx, slog.LevelWarn, "session: JWKS fetch failed",
		slog.String("url", redactURL(s.url)), slog.String("error", err.Error()))
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "[unparsable]"
	}
	u.RawQuery, u.Fragment = "", ""
	return u.Redacted()
}

// publicOf returns the public half of a private key (a JWKS may carry "d").
func publicOf(key any) any {
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
		return pk.Public()
	}
	return key
}

// jwksHTTPClient returns the client for JWKS fetches and, when it built the
// client, a function releasing its idle connections. Either way, responses
// are capped at jwksMaxBodyBytes (jwkset decodes the body without a limit).
func jwksHTTPClient(c *http.Client) (*http.Client, func()) {
	if c != nil {
		cp := *c
		base := cp.Transport
		if base == nil {
			base = http.DefaultTransport
		}
		cp.Transport = limitedTransport{base: base}
		return &cp, nil
	}
	var tr *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		tr = dt.Clone()
	} else {
		tr = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	return &http.Client{
		Timeout:   jwksHTTPTimeout,
		Transport: limitedTransport{base: tr},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a 3xx then fails as a bad status
		},
	}, tr.CloseIdleConnections
}

var errJWKSTooLarge = errors.New("session: JWKS response exceeds 1 MiB")

type limitedTransport struct{ base http.RoundTripper }

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: jwksMaxBodyBytes}
	return resp, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the base.
func (t limitedTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errJWKSTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// jwksKeyfunc is the part of keyfunc.Keyfunc we use.
type jwksKeyfunc interface {
	KeyfuncCtx(ctx context.Context) jwt.Keyfunc
}

var _ jwksKeyfunc = keyfunc.Keyfunc(nil)

// jwkFitsAlg applies keyfunc's alg and use checks plus ours to a stored JWK;
// it is used where keyfunc itself does not check (tokens without kid, Ready).
func jwkFitsAlg(j jwkset.JWK, alg string) bool {
	m := j.Marshal()
	if m.USE != "" && m.USE != jwkset.UseSig {
		return false
	}
	if m.ALG != "" && m.ALG.String() != alg {
		return false
	}
	return keyFitsAlg(publicOf(j.Key()), alg)
}
