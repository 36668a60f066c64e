package broker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// How long a check of the client credentials is believed: good for five
// minutes (a refused user costs no second call meanwhile); refused for
// thirty seconds, during which no token call goes out with the refused
// secret (Qlik: "some endpoints may have additional rate limits for error
// responses", so a wrong secret must not loop), unless the secret file
// changes. After that one request asks again, so a secret fixed at the
// tenant's side is seen within that time.
const (
	credsGoodFor = 5 * time.Minute
	credsBadFor  = 30 * time.Second
)

// clientState is what a tenant's upstream knows of its own client
// credentials, kept across registry reloads.
type clientState struct {
	okUntil  atomic.Int64 // unix nanos: credentials checked good until then
	badUntil atomic.Int64 // unix nanos: credentials refused; ask nothing until then
	// check coalesces concurrent credential checks into one call.
	check singleflight.Group
	// expiryWarned is set once the tenant's token expiries were reported
	// as disagreeing, so the log says it once per tenant.
	expiryWarned atomic.Bool
}

func (c *clientState) knownGood(now time.Time) bool { return now.UnixNano() < c.okUntil.Load() }
func (c *clientState) knownBad(now time.Time) bool  { return now.UnixNano() < c.badUntil.Load() }

// stillRefused fails at once, with no call to the tenant, while the client
// credentials are known to be refused and neither the secret nor the key
// on disk has changed.
func (u *upstream) stillRefused(ctx context.Context) error {
	if !u.client.knownBad(u.now()) || u.reloadSecret(ctx) || u.keyChangedOnDisk(ctx) {
		return nil
	}
	reject(u.m, CauseInvalidClient)
	return fmt.Errorf("%w: refused by the tenant within the last %v; waiting for a new secret or key", ErrInvalidClient, credsBadFor)
}

// checkCredentials asks the tenant for a client_credentials token with the
// current credentials, once for all concurrent callers, and reports
// whether the tenant took them. A 400 or 401 is a refused client; a token
// or any other answer about the client (a 403: its bot user is disabled
// or has too many tokens) means the credentials are good. err is set when
// the check got no answer (cooldown, breaker, 5xx, network). The check
// needs the client to be allowed the client_credentials grant, as Qlik's
// M2M impersonation clients are.
func (u *upstream) checkCredentials(ctx context.Context) (good bool, err error) {
	creds := u.credentials()
	v, err, _ := u.client.check.Do(checkKey(creds), func() (any, error) {
		_, err := u.road.ClientCredentialsToken(ctx, creds, "")
		var qe *qlik.Error
		switch {
		case err == nil:
		case refusal(err) != nil:
			return false, nil
		case !errors.As(err, &qe) || qe.StatusCode >= 500 || qe.StatusCode == 429:
			return false, err
		}
		u.client.okUntil.Store(u.now().Add(credsGoodFor).UnixNano())
		return true, nil
	})
	if err != nil {
		return false, err
	}
	return v.(bool), nil
}

// noteExpiry logs, once per tenant, that the tenant's expires_at and
// expires_in disagreed and which was used (the token is served).
func (u *upstream) noteExpiry(ctx context.Context, tok *qlik.Token) {
	if tok == nil || tok.ExpiryWarning == "" || !u.client.expiryWarned.CompareAndSwap(false, true) {
		return
	}
	u.log.WarnContext(ctx, "the tenant's token expiry fields disagree; using the earlier usable one (logged once per tenant)",
		"tenant", u.tenant.ID, "detail", tok.ExpiryWarning, "expires_at", tok.ExpiresAt)
}

// checkKey names the credentials a check is for, so that concurrent checks
// share one call only when they would send the same secret or sign with
// the same key.
func checkKey(c qlik.Credentials) string {
	if c.Key == nil {
		return "secret:" + c.ClientSecret
	}
	return "key:" + c.Key.PublicJWK().Thumbprint() + ":" + c.Key.KeyID() + ":" + c.Key.Algorithm()
}
