package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/sync/singleflight"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// A re-ask that names the refused token.
//
// @qlik/api keeps the token getAccessToken gave it and asks again only
// after the tenant answered 401 (or a websocket token exchange failed). A
// token can die at the tenant without passing through the broker (revoked
// elsewhere, a tenant-side session reset): the broker would hand the same
// cached token out again, the page's retry would fail, and the embed would
// stay broken until the cached copy expired. So a page may name the token
// it was refused, by hash, on its next GET or POST /v1/token:
//
//	X-QTB-Refused-Token: sha256:<64 lowercase hex digits of SHA-256(token)>
//
// The broker then takes the identity's current token (as any request
// would) and:
//
//   - if the hash is not that token's, answers it: the page holds an older
//     token, and this one is news to it. No tenant call of any kind.
//   - otherwise asks the tenant about that token with one call that is not
//     /oauth/token: GET /api/v1/users/me with the token as bearer, redirects
//     not followed (Qlik documents a 301 there). 401 means refused: the
//     token is evicted from every tier and every replica (Broker.Reissue:
//     L1, Redis, the invalidation broadcast) and a fresh one minted
//     through the same guarded road, limits and budgets as any mint. Any
//     other answer means the tenant still takes it: the same token is
//     answered. A check that fails (network, 5xx, 429) answers the same
//     token too.
//
// Checks are limited per identity on each replica (reaskBurst at once,
// then one per reaskEvery): beyond that the same token is answered
// unchecked, so a page in a loop costs a few users/me calls a minute and
// never a token call. Concurrent claims about one token share one check.
// Not a memo of accepted tokens: a stray 401 followed seconds later by a
// real revocation must still be checked.
//
// The answer says which case it was in X-QTB-Refused-Token-Result
// (mismatch, accepted, refused, unchecked, limited); the body is the usual
// token answer. A malformed header is 400. The per-identity request rate
// (limitUser) applies before any of this.

// RefusedTokenHeader carries, on GET or POST /v1/token, the hash of the
// token the caller believes the tenant refused: "sha256:" and the lowercase
// hex SHA-256 of the token.
const RefusedTokenHeader = "X-QTB-Refused-Token"

// refusedTokenResultHeader says what the broker made of the claim.
const refusedTokenResultHeader = "X-QTB-Refused-Token-Result"

// hdrExposed lists the answer headers a browser page may read (CORS).
var hdrExposed = []string{echo.HeaderRetryAfter + ", " + refusedTokenResultHeader + ", " + GroupsHeader}

// Outcomes of a refused-token claim: the result header's values and the
// label values of the claims metric.
const (
	reaskMismatch  = metrics.ClaimMismatch
	reaskAccepted  = metrics.ClaimAccepted
	reaskRefused   = metrics.ClaimRefused
	reaskUnchecked = metrics.ClaimUnchecked
	reaskLimited   = metrics.ClaimLimited
)

const (
	// reaskBurst checks at once, then one per reaskEvery, per identity and
	// replica.
	reaskBurst = 3
	reaskEvery = 10 * time.Second
	// reaskTimeout bounds one check at the tenant.
	reaskTimeout = 10 * time.Second
	// usersMePath is the check: any valid token may read it.
	usersMePath = "/api/v1/users/me"
)

// tokenCheck asks a tenant whether it still accepts an access token: one
// GET /api/v1/users/me with the token as bearer, redirects not followed.
// The re-ask and the check of suspect L1 copies (suspect.go) both use it.
type tokenCheck struct {
	client *http.Client
}

func newTokenCheck(transport http.RoundTripper) tokenCheck {
	return tokenCheck{client: &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// refusalChecker asks a tenant whether it still accepts a token, sharing
// concurrent checks of one token and limiting checks per identity.
type refusalChecker struct {
	tokenCheck
	limit  *userLimiter
	flight singleflight.Group
	log    *slog.Logger
}

func newRefusalChecker(transport http.RoundTripper, now func() time.Time, log *slog.Logger) *refusalChecker {
	return &refusalChecker{
		tokenCheck: newTokenCheck(transport),
		limit:      newUserLimiter(1/reaskEvery.Seconds(), reaskBurst, now),
		log:        log,
	}
}

// parseRefusedClaim returns the SHA-256 a RefusedTokenHeader value names.
func parseRefusedClaim(v string) ([]byte, bool) {
	hexSum, ok := strings.CutPrefix(strings.TrimSpace(v), "sha256:")
	if !ok || len(hexSum) != 2*sha256.Size || strings.ToLower(hexSum) != hexSum {
		return nil, false
	}
	sum, err := hex.DecodeString(hexSum)
	return sum, err == nil
}

// refusedToken handles a /v1/token request that names a refused token;
// one without the header goes on to next untouched.
func (a *API) refusedToken(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		claim := c.Request().Header.Get(RefusedTokenHeader)
		if claim == "" {
			return next(c)
		}
		sum, ok := parseRefusedClaim(claim)
		if !ok {
			return echo.NewHTTPError(http.StatusBadRequest, RefusedTokenHeader+" must be sha256:<64 lowercase hex digits>")
		}
		ctx := c.Request().Context()
		id, _ := session.IdentityFrom(c)
		cur, err := a.broker.token(ctx, id)
		if err != nil {
			return err
		}
		have := sha256.Sum256(cur.text())
		result := reaskMismatch
		if subtle.ConstantTimeCompare(have[:], sum) == 1 {
			result = a.reask.check(ctx, a, id, cur.tok.AccessToken, hex.EncodeToString(have[:]))
		}
		a.m.RefusedTokenClaims.WithLabelValues(result).Inc()
		c.Response().Header().Set(refusedTokenResultHeader, result)
		if result != reaskRefused {
			return a.writeToken(c, cur)
		}
		// Evicted everywhere, then minted like any cold key: the guard,
		// its limits and the per-user budget apply.
		if _, err := a.broker.reissue(ctx, id, cur.tok.AccessToken, true); err != nil {
			return err
		}
		fresh, err := a.broker.token(ctx, id)
		if err != nil {
			return err
		}
		return a.writeToken(c, fresh)
	}
}

// check asks id's tenant whether it still accepts token and returns the
// outcome: reaskAccepted, reaskRefused, reaskUnchecked or reaskLimited.
func (r *refusalChecker) check(ctx context.Context, a *API, id session.Identity, token, sum string) string {
	who := id.Tenant + "\x00" + id.UserField + "\x00" + id.UserValue
	up, err := a.broker.tenantFor(id)
	if err != nil {
		return reaskUnchecked
	}
	v, _, _ := r.flight.Do(who+"\x00"+sum, func() (any, error) {
		if _, ok := r.limit.allow(who); !ok {
			return reaskLimited, nil
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reaskTimeout)
		defer cancel()
		status, err := r.ask(cctx, up.tenant.URL, token)
		switch {
		case err != nil || status == http.StatusTooManyRequests || status >= 500:
			r.log.WarnContext(ctx, "could not check a token a page named as refused; answering it unchanged",
				"tenant", up.tenant.ID, "status", status, "err", err)
			return reaskUnchecked, nil
		case status == http.StatusUnauthorized:
			r.log.InfoContext(ctx, "the tenant refused a token the broker holds; evicting it and issuing a new one", "tenant", up.tenant.ID)
			return reaskRefused, nil
		}
		return reaskAccepted, nil
	})
	return v.(string)
}

// ask sends the check and returns the tenant's status.
func (r tokenCheck) ask(ctx context.Context, tenantURL, token string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(tenantURL, "/")+usersMePath, nil)
	if err != nil {
		return 0, fmt.Errorf("broker: token check: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("broker: token check: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}
