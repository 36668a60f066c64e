package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// Remembered refusals: when the tenant refuses a token for a user (no such
// user, or one that is disabled or not allowed), asking again in the next
// moments would get the same answer and cost a token call each time. The
// refusal is kept per tenant, client and user for RefusalTTL, in L1 and in
// Redis for the other replicas, and answered from there. A logout of the
// user and a reload of the tenants forget it.
//
// The layer does not decide what a refusal is: it remembers the errors
// the upstream already classified as the user's (ErrUnknownUser, a 403 to
// the token call) and gives them back in the same form.

// Kinds of remembered refusal, as stored.
const (
	refusedUnknown   = "unknown"
	refusedForbidden = "forbidden"
)

// errRemembered marks an answer given from a remembered refusal.
var errRemembered = errors.New("broker: the tenant refused this user moments ago (remembered)")

// refusalKind says whether err is the tenant refusing the user, and how.
func refusalKind(err error) (string, bool) {
	switch {
	case errors.Is(err, errRemembered):
		return "", false // already remembered
	case errors.Is(err, ErrUnknownUser):
		return refusedUnknown, true
	case qlikStatus(err, 403) != nil:
		return refusedForbidden, true
	}
	return "", false
}

// refusalError is the error a remembered refusal answers with.
func refusalError(kind string) error {
	if kind == refusedForbidden {
		return fmt.Errorf("%w: %w", errRemembered, &qlik.Error{Endpoint: "token", StatusCode: 403, Code: "remembered"})
	}
	return fmt.Errorf("%w: %w", ErrUnknownUser, errRemembered)
}

// refusalKey is qtb:refused:<tenant>:{<hash>}, in the user's hash slot.
func (k keys) refusal() string { return "qtb:refused:" + strings.TrimPrefix(k.token, "qtb:tok:") }

// remembered returns the refusal remembered for k, if any: from L1, else
// from Redis when it was written after the last reload of the tenants.
// A Redis failure is counted and treated as nothing remembered.
func (b *Broker) remembered(ctx context.Context, k keys) error {
	if b.refusalTTL <= 0 {
		return nil
	}
	kind, ok := b.refused.Get(k.token)
	if !ok && b.shared != nil {
		raw, err := b.shared.Get(ctx, k.refusal())
		switch {
		case err == nil:
			kind, ok = b.parseRefusal(string(raw))
		case !errors.Is(err, cache.ErrMiss):
			b.redisError(ctx, "get", err)
		}
		if ok {
			_ = b.refused.Set(k.token, kind, b.refusalTTL)
		}
	}
	if !ok {
		return nil
	}
	reject(b.m, CauseRememberedRefusal)
	return refusalError(kind)
}

// parseRefusal reads "<kind>:<unix ms written>", ignoring refusals written
// before the tenants were last reloaded here.
func (b *Broker) parseRefusal(raw string) (string, bool) {
	kind, ms, found := strings.Cut(raw, ":")
	at, err := strconv.ParseInt(ms, 10, 64)
	if !found || err != nil || (kind != refusedUnknown && kind != refusedForbidden) {
		return "", false
	}
	return kind, at >= b.refusalsSince.Load()
}

// remember keeps err when it is the tenant refusing the user.
func (b *Broker) remember(ctx context.Context, k keys, err error) {
	kind, ok := refusalKind(err)
	if !ok || b.refusalTTL <= 0 {
		return
	}
	_ = b.refused.Set(k.token, kind, b.refusalTTL)
	if b.shared != nil {
		v := kind + ":" + strconv.FormatInt(b.now().UnixMilli(), 10)
		if err := b.shared.Set(ctx, k.refusal(), []byte(v), b.refusalTTL); err != nil {
			b.redisError(ctx, "set", err)
		}
	}
}

// forgetRefusal drops k's remembered refusal here and in Redis.
func (b *Broker) forgetRefusal(ctx context.Context, k keys) error {
	b.refused.Delete(k.token)
	if b.shared == nil || b.refusalTTL <= 0 {
		return nil
	}
	if err := b.shared.Delete(ctx, k.refusal()); err != nil {
		b.redisError(ctx, "delete", err)
		return err
	}
	return nil
}

// forgetRefusals drops every remembered refusal: the tenants were
// reloaded. Those in Redis written before now are ignored from here on.
func (b *Broker) forgetRefusals() {
	if b.refused == nil {
		return
	}
	b.refusalsSince.Store(b.now().UnixMilli())
	_ = b.refused.Close() // Close empties it; it stays usable
}

// defaultRefusalTTL is how long a refusal is remembered by default.
const defaultRefusalTTL = 30 * time.Second
