package broker

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// tenantIDPattern keeps tenant ids safe in Redis key names and metric labels.
var tenantIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidTenantID reports whether id can name a tenant: lower-case letters,
// digits, '.', '_' and '-', starting with a letter or digit, at most 63
// characters, since it goes into Redis key names and metric labels. This is
// the one rule for tenant ids: the configuration and the provision command
// check ids with it too. It fails with an error that Is ErrInvalidTenantID.
func ValidTenantID(id string) error {
	if !tenantIDPattern.MatchString(id) {
		return tenantIDError(id)
	}
	return nil
}

// tenantSet is one immutable generation of the registry; SetTenants swaps
// it whole, so a request sees either the old set or the new one.
type tenantSet struct {
	byID map[string]*upstream
	only *upstream // the tenant of sessions without a tenant claim, when there is exactly one
}

// SetTenants replaces the tenants served. It validates the whole list first
// and changes nothing on error. A tenant that keeps its id, URL and client
// keeps its upstream state (cooldown, breaker, rate limit) across the swap.
func (b *Broker) SetTenants(tenants []Tenant) error {
	var errs []error
	seen := map[string]bool{}
	for _, t := range tenants {
		if err := ValidTenantID(t.ID); err != nil {
			errs = append(errs, err)
		} else if seen[t.ID] {
			errs = append(errs, fmt.Errorf("broker: tenant %q is listed twice", t.ID))
		}
		seen[t.ID] = true
		if t.Issuer == nil {
			errs = append(errs, fmt.Errorf("broker: tenant %q has no issuer", t.ID))
		}
		if t.Credentials.ClientID == "" {
			errs = append(errs, fmt.Errorf("broker: tenant %q has no client id", t.ID))
		}
	}
	if len(tenants) == 0 {
		errs = append(errs, errors.New("broker: no tenants"))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	old := b.tenants.Load()
	set := &tenantSet{byID: make(map[string]*upstream, len(tenants))}
	for _, t := range tenants {
		var up *upstream
		if old != nil {
			if prev := old.byID[t.ID]; prev != nil && prev.tenant.URL == t.URL && prev.tenant.Credentials.ClientID == t.Credentials.ClientID {
				up = prev.withTenant(t)
			}
		}
		if up == nil {
			up = newUpstream(t, newGuard(t.Issuer, b.guardConfig(t.ID)), b.tracer, b.deps)
		}
		set.byID[t.ID] = up
	}
	if len(tenants) == 1 {
		set.only = set.byID[tenants[0].ID]
	}
	b.tenants.Store(set)
	if old != nil {
		// A reload may have fixed what the tenant refused users for.
		b.forgetRefusals()
	}
	return nil
}

// guardConfig is what the guard of a new tenant gets from the broker.
func (b *Broker) guardConfig(tenant string) guardConfig {
	gc := guardConfig{tenant: tenant, upstream: b.upstreamCfg, limiter: b.limiter, deps: b.deps}
	if b.shared != nil {
		gc.cooldowns = b.shared
	}
	return gc
}

// TenantIDs lists the tenants served, sorted.
func (b *Broker) TenantIDs() []string {
	ids := make([]string, 0, len(b.tenants.Load().byID))
	for id := range b.tenants.Load().byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// tenantFor picks the tenant of a session.
func (b *Broker) tenantFor(id session.Identity) (*upstream, error) {
	set := b.tenants.Load()
	if id.Tenant == "" {
		if set.only != nil {
			return set.only, nil
		}
		return nil, fmt.Errorf("%w: the session names no tenant", ErrUnknownTenant)
	}
	if up := set.byID[id.Tenant]; up != nil {
		return up, nil
	}
	return nil, ErrUnknownTenant
}

// resolve maps a session to its tenant and the Qlik user lookup, turning an
// email into a user id through the tenant's directory (cached).
func (b *Broker) resolve(ctx context.Context, id session.Identity) (*upstream, qlik.UserLookup, error) {
	up, err := b.tenantFor(id)
	if err != nil {
		return nil, qlik.UserLookup{}, err
	}
	if up.tenant.UserLookup != "" {
		id.UserField = up.tenant.UserLookup
	}
	user := qlik.UserLookup{Field: id.UserField, Value: id.UserValue}
	if id.UserField == session.LookupEmail {
		userID, err := b.userIDByEmail(ctx, up, id.UserValue)
		if err != nil {
			return nil, qlik.UserLookup{}, err
		}
		user = qlik.UserLookup{Field: qlik.FieldUserID, Value: userID}
	}
	if err := user.Validate(); err != nil {
		return nil, qlik.UserLookup{}, fmt.Errorf("broker: %w", err)
	}
	return up, user, nil
}

// emailMappingTTL is how long an email -> user id mapping is cached. A user
// id never changes for an email in practice; the TTL bounds the effect of
// a deleted and re-created user.
const emailMappingTTL = time.Hour

// userIDByEmail looks the email up in L1, then Redis, then the tenant's
// users API, one lookup per email at a time.
func (b *Broker) userIDByEmail(ctx context.Context, up *upstream, email string) (string, error) {
	if up.tenant.Directory == nil {
		return "", fmt.Errorf("%w: tenant %s has no users directory for email lookups", ErrUnknownUser, up.tenant.ID)
	}
	key := b.emailKey(up, email)
	if userID, ok := b.emails.Get(key); ok {
		return userID, nil
	}
	if b.shared != nil {
		if raw, err := b.shared.Get(ctx, key); err == nil {
			if b.keyring != nil {
				raw, err = b.keyring.Open([]byte(key), raw)
			}
			if err == nil && len(raw) > 0 {
				_ = b.emails.Set(key, string(raw), min(b.l1TTL, emailMappingTTL))
				return string(raw), nil
			}
		} else if !errors.Is(err, cache.ErrMiss) {
			b.redisError(ctx, "get", err)
		}
	}
	v, err, _ := b.flight.Do(key, func() (any, error) {
		// Shared by concurrent callers: not cancelled by the first one.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
		defer cancel()
		start := b.now()
		userID, err := up.tenant.Directory.UserIDByEmail(ctx, email)
		observeUpstream(b.m, up.tenant.ID, "users", b.now().Sub(start), err)
		return userID, err
	})
	if err != nil {
		if errors.Is(err, ErrUnknownUser) {
			return "", err
		}
		return "", fmt.Errorf("%w: users: %w", ErrUpstream, err)
	}
	userID := v.(string)
	_ = b.emails.Set(key, userID, emailMappingTTL)
	if b.shared != nil {
		val := []byte(userID)
		if b.keyring != nil {
			val = b.keyring.Seal([]byte(key), val)
		}
		if err := b.shared.Set(ctx, key, val, emailMappingTTL); err != nil {
			b.redisError(ctx, "set", err)
		}
	}
	return userID, nil
}

// originAllowed reports whether a tenant lists origin among its own.
func (b *Broker) originAllowed(id session.Identity, origin string) bool {
	up, err := b.tenantFor(id)
	return err == nil && slices.Contains(up.tenant.AllowedOrigins, origin)
}

// anyTenantAllows reports whether some tenant allows origin, for preflight requests,
// which carry no session.
func (b *Broker) anyTenantAllows(origin string) bool {
	for _, up := range b.tenants.Load().byID {
		if slices.Contains(up.tenant.AllowedOrigins, origin) {
			return true
		}
	}
	return false
}

// tenantIDError says how a tenant id must look, without the pattern's syntax.
type tenantIDError string

func (e tenantIDError) Error() string {
	return fmt.Sprintf("tenant id %q: use 1 to 63 lower-case letters, digits, '.', '_' and '-', starting with a letter or digit", string(e))
}

func (e tenantIDError) Is(target error) bool { return target == ErrInvalidTenantID }
