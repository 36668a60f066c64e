package broker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// Private Key JWT: tenants whose clients sign assertions instead of sending
// a secret. A rotated key file is picked up after the tenant refuses the
// old key, as a rotated secret is; the public keys in use are served as a
// JWKS for operators to compare with what the tenant holds.

// keySwapWindow is how long after a key swap a refused request retries
// with the new key even though it found no change on disk itself.
const keySwapWindow = 10 * time.Second

// reloadKey re-reads the client's signing key and reports whether it
// changed.
func (u *upstream) reloadKey(ctx context.Context) bool {
	if u.tenant.ReloadKey == nil {
		return false
	}
	k, err := u.tenant.ReloadKey()
	if err != nil {
		// The error names the file, never the key.
		u.log.ErrorContext(ctx, "re-reading the client key failed", "tenant", u.tenant.ID, "err", err)
		return false
	}
	u.credsMu.Lock()
	defer u.credsMu.Unlock()
	now := u.now()
	if k == nil || k.Equal(u.creds.Key) {
		// Requests in flight when another one swapped the key were
		// refused with the old key: they retry with the new one.
		swapped := u.keySwappedAt.Load()
		return swapped != 0 && now.Sub(time.Unix(0, swapped)) < keySwapWindow
	}
	u.creds.Key = k
	u.keySwappedAt.Store(now.UnixNano())
	u.client.badUntil.Store(0) // the refused key is gone
	u.log.InfoContext(ctx, "client key changed on disk; signing with the new one", "tenant", u.tenant.ID, "kid", k.KeyID())
	return true
}

// keyChangedOnDisk re-reads the signing key and reports whether a new one
// was swapped in since the call began, by this call or a concurrent one.
// Unlike reloadKey it ignores the retry window after a swap, so a client
// refused with its new key stays quiet.
func (u *upstream) keyChangedOnDisk(ctx context.Context) bool {
	before := u.keySwappedAt.Load()
	u.reloadKey(ctx)
	return u.keySwappedAt.Load() != before
}

// adminSource is the admin token's source: client_credentials, re-reading
// the admin client's key once when the tenant refuses it.
func (d *QlikDirectory) adminSource(scope string) qlik.TokenSource {
	if d.ReloadKey == nil || d.Admin.Key == nil {
		return d.Client.ClientCredentials(d.Admin, scope)
	}
	s := &keyReloadingSource{client: d.Client, reload: d.ReloadKey, scope: scope, creds: d.Admin}
	d.keySource = s
	return s
}

// SigningKey is the key the admin client signs with now; nil when it uses
// a secret.
func (d *QlikDirectory) SigningKey() *qlik.SigningKey {
	d.admin()
	if d.keySource != nil {
		return d.keySource.credentials().Key
	}
	return d.Admin.Key
}

// keyReloadingSource mints client_credentials tokens with a signing key
// and, when the tenant refuses it, re-reads the key file and tries once
// more if the key changed.
type keyReloadingSource struct {
	client *qlik.Client
	reload func() (*qlik.SigningKey, error)
	scope  string

	mu    sync.Mutex
	creds qlik.Credentials
}

func (s *keyReloadingSource) credentials() qlik.Credentials {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creds
}

// Token implements qlik.TokenSource.
func (s *keyReloadingSource) Token(ctx context.Context) (*qlik.Token, error) {
	creds := s.credentials()
	tok, err := s.client.ClientCredentialsToken(ctx, creds, s.scope)
	var qe *qlik.Error
	// Any refusal but a rate limit: the code of a refused client differs
	// between tenants (401, or 400 with a service code).
	if !errors.As(err, &qe) || qe.StatusCode < 400 || qe.StatusCode > 499 || qe.StatusCode == http.StatusTooManyRequests {
		return tok, err
	}
	k, rerr := s.reload()
	if rerr != nil || k == nil || k.Equal(creds.Key) {
		return nil, err
	}
	s.mu.Lock()
	s.creds.Key = k
	creds = s.creds
	s.mu.Unlock()
	return s.client.ClientCredentialsToken(ctx, creds, s.scope)
}

// PublicKeys are the public halves of the keys the broker signs with now,
// for every tenant's impersonation and admin clients, each once.
func (b *Broker) PublicKeys() []qlik.JWK {
	var keys []qlik.JWK
	add := func(k *qlik.SigningKey) {
		if k != nil && !slices.Contains(keys, k.PublicJWK()) {
			keys = append(keys, k.PublicJWK())
		}
	}
	set := b.tenants.Load()
	ids := make([]string, 0, len(set.byID))
	for id := range set.byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		up := set.byID[id]
		add(up.credentials().Key)
		if d, ok := up.tenant.Directory.(interface{ SigningKey() *qlik.SigningKey }); ok {
			add(d.SigningKey())
		}
	}
	return keys
}

// JWKSHandler serves PublicKeys as a JWKS ({"keys": [...]}), for the
// metrics listener: operators compare it with the keys the tenant holds.
func (b *Broker) JWKSHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		keys := b.PublicKeys()
		if keys == nil {
			keys = []qlik.JWK{}
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(struct {
			Keys []qlik.JWK `json:"keys"`
		}{keys})
	})
}
