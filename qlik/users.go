package qlik

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// User statuses the tenant reports: the reference's five.
const (
	UserActive      = "active"
	UserDisabled    = "disabled"
	UserInvited     = "invited"
	UserDeleted     = "deleted"
	UserProvisioned = "provisioned"
)

// usersPageSize is the limit asked of /api/v1/users: a lookup fits one page.
const usersPageSize = 100

// User is a tenant user as /api/v1/users describes it.
type User struct {
	ID      string `json:"id"`      // the Qlik user id, e.g. 6422bad8022070c06d2417bc
	Subject string `json:"subject"` // the IdP subject
	Email   string `json:"email"`
	Name    string `json:"name"`
	Status  string `json:"status"` // UserActive, UserDisabled, UserInvited, ...
}

// UserCreate is the body of CreateUser. Empty fields are not sent.
type UserCreate struct {
	Name    string `json:"name,omitempty"`
	Email   string `json:"email,omitempty"`
	Subject string `json:"subject,omitempty"` // required by the tenant
	Status  string `json:"status,omitempty"`  // e.g. UserActive
}

// FindUsers lists the users matching filter, a SCIM filter such as
// `email eq "ada@example.com"` (build values with QuoteFilterValue); an empty
// filter lists everyone. It follows links.next for at most 100 pages of 100.
func (a *Admin) FindUsers(ctx context.Context, filter string) ([]User, error) {
	q := url.Values{"limit": {strconv.Itoa(usersPageSize)}}
	if filter != "" {
		q.Set("filter", filter)
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return nil, err
	}
	users, err := listAll[User](ctx, a.c, endpointUsers, bearer, "/api/v1/users", q)
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		if u.ID == "" {
			return nil, malformed(endpointUsers, "a user has no id")
		}
	}
	return users, nil
}

// FindUserByEmail returns the one active user whose email is email: an
// email can also belong to deleted or disabled users, which the filter
// leaves out (`email eq "..." and (status eq "active")`, the status term
// grouped as the reference's grammar requires). It fails with
// ErrUserNotFound when there is none and ErrAmbiguousUser when there are
// several (Qlik does not require emails to be unique). The tenant compares
// case-insensitively.
func (a *Admin) FindUserByEmail(ctx context.Context, email string) (User, error) {
	if email == "" {
		return User{}, fmt.Errorf("%w: email is empty", ErrInvalidRequest)
	}
	return a.findOne(ctx, "email eq "+QuoteFilterValue(email)+` and (status eq "`+UserActive+`")`)
}

// FindUserBySubject returns the one user whose IdP subject is subject, failing
// like FindUserByEmail.
func (a *Admin) FindUserBySubject(ctx context.Context, subject string) (User, error) {
	if subject == "" {
		return User{}, fmt.Errorf("%w: subject is empty", ErrInvalidRequest)
	}
	return a.findOne(ctx, "subject eq "+QuoteFilterValue(subject))
}

func (a *Admin) findOne(ctx context.Context, filter string) (User, error) {
	users, err := a.FindUsers(ctx, filter)
	switch {
	case err != nil:
		return User{}, err
	case len(users) == 0:
		return User{}, ErrUserNotFound
	case len(users) > 1:
		return User{}, fmt.Errorf("%w: %d users", ErrAmbiguousUser, len(users))
	}
	return users[0], nil
}

// CreateUser creates a user, as just-in-time provisioning does, and returns
// it as the tenant stored it (201).
func (a *Admin) CreateUser(ctx context.Context, u UserCreate) (User, error) {
	if u.Subject == "" {
		return User{}, fmt.Errorf("%w: user subject is empty", ErrInvalidRequest)
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return User{}, err
	}
	_, body, err := a.c.send(ctx, request{
		endpoint: endpointUsers, method: http.MethodPost, url: a.c.base + "/api/v1/users", bearer: bearer, body: u,
	})
	if err != nil {
		return User{}, err
	}
	return parseUser(endpointUsers, body)
}

// Me returns the user the source's token acts for: for an impersonation
// token, the impersonated user; for client credentials, the client's bot
// user. GET /api/v1/users/me is documented as a 301 to the user's own
// /api/v1/users/{id}; Me follows one such redirect when it stays on the
// tenant under /api/v1/users/, and also takes a 200 with the user.
func (a *Admin) Me(ctx context.Context) (User, error) {
	bearer, err := a.bearer(ctx)
	if err != nil {
		return User{}, err
	}
	var loc string
	_, body, err := a.c.send(ctx, request{
		endpoint: endpointUsersMe, method: http.MethodGet, url: a.c.base + "/api/v1/users/me", bearer: bearer, location: &loc,
	})
	var qe *Error
	if errors.As(err, &qe) && qe.StatusCode >= 300 && qe.StatusCode <= 399 && loc != "" {
		target, reason := a.c.userURL(loc)
		if reason != "" {
			return User{}, malformed(endpointUsersMe, reason)
		}
		_, body, err = a.c.send(ctx, request{endpoint: endpointUsersMe, method: http.MethodGet, url: target, bearer: bearer})
	}
	if err != nil {
		return User{}, err
	}
	return parseUser(endpointUsersMe, body)
}

// userURL resolves the Location of /api/v1/users/me against it and returns
// it, or a reason to refuse it: it must stay on the tenant and name one
// user under /api/v1/users/, or the bearer would go elsewhere.
func (c *Client) userURL(loc string) (string, string) {
	const prefix = "/api/v1/users/"
	base, _ := url.Parse(c.base + prefix + "me") // New validated the base
	u, err := base.Parse(loc)
	switch {
	case err != nil:
		return "", "users/me redirect is not a valid URL"
	case !strings.EqualFold(u.Scheme, base.Scheme) || !strings.EqualFold(u.Host, base.Host) || u.User != nil:
		return "", "users/me redirects to another host"
	case !strings.HasPrefix(u.Path, prefix) || strings.Contains(u.Path[len(prefix):], "/") || u.Path == prefix || u.Path == prefix+"me":
		return "", "users/me redirects outside /api/v1/users/{id}"
	}
	return c.base + u.EscapedPath(), ""
}

func parseUser(endpoint string, body []byte) (User, error) {
	var u User
	if err := json.Unmarshal(body, &u); err != nil {
		return User{}, malformed(endpoint, "body is not a user JSON object")
	}
	if u.ID == "" {
		return User{}, malformed(endpoint, "user has no id")
	}
	return u, nil
}
