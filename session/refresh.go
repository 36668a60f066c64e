package session

import (
	"context"
	"errors"
)

// Refresh makes the Verifier forget what it may hold from keys since
// removed: it fetches the JWKS now (replacing the loaded keys, so a key the
// identity provider pulled stops verifying at once instead of at the next
// background refresh) and forgets the tokens it remembered as verified.
// For an HMAC secret or PEM key only the remembered tokens go. The caller
// bounds the fetch with ctx; on an error the loaded keys stay.
func (v *Verifier) Refresh(ctx context.Context) error {
	v.verified.reset()
	if v.jwks == nil {
		return nil
	}
	if v.ctx.Err() != nil {
		return errClosed
	}
	if err := v.jwks.fetch(ctx, v.ctx); err != nil {
		return errors.Join(errors.New("session: JWKS fetch failed"), err)
	}
	return nil
}

// reset forgets every remembered token; nil-safe.
func (v *verified) reset() {
	if v == nil {
		return
	}
	v.mu.Lock()
	clear(v.entries)
	v.mu.Unlock()
}
