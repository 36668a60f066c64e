package broker

import (
	"slices"

	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// serviceTokenRequest is the body of POST /v1/service/token.
type serviceTokenRequest struct {
	Tenant     string          `json:"tenant"`
	UserLookup qlik.UserLookup `json:"user_lookup"`
}

// serviceToken hands an OEM backend (a scheduled job, no user session) a
// token for any user of a tenant its service credential is scoped to. The
// credential is a JWT verified by its own verifier, apart from user
// sessions; its list claim names the tenants ("*" for all). Every call is
// written to the audit log: who asked, for which user, which tenant.
func (a *API) serviceToken(c echo.Context) error {
	svc, _ := session.IdentityFrom(c)
	var body serviceTokenRequest
	dec := jsonDecoder(c.Request())
	if err := dec.Decode(&body); err != nil || body.Tenant == "" || body.UserLookup.Validate() != nil {
		return errBadRequest
	}
	allowed := slices.Contains(svc.List, body.Tenant) || slices.Contains(svc.List, "*")
	a.log.InfoContext(c.Request().Context(), "audit: service token request",
		"service", svc.UserValue, "tenant", body.Tenant,
		"user_field", body.UserLookup.Field, "user", body.UserLookup.Value, "allowed", allowed)
	if !allowed {
		return errServiceScope
	}
	user := session.Identity{Tenant: body.Tenant, UserField: body.UserLookup.Field, UserValue: body.UserLookup.Value}
	// A token call spends the service's budget and the user's.
	ctx := withBudget(c.Request().Context(), a.users, serviceKey(svc), identityKey(user))
	tok, err := a.broker.token(ctx, user)
	if err != nil {
		return err
	}
	return a.writeToken(c, tok)
}
