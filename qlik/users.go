package qlik

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// User statuses the tenant reports.
const (
	UserActive   = "active"
	UserDisabled = "disabled"
	UserInvited  = "invited"
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
func (c *Client) FindUsers(ctx context.Context, bearer, filter string) ([]User, error) {
	if err := checkBearer(bearer); err != nil {
		return nil, err
	}
	q := url.Values{"limit": {strconv.Itoa(usersPageSize)}}
	if filter != "" {
		q.Set("filter", filter)
	}
	users, err := listAll[User](ctx, c, endpointUsers, bearer, "/api/v1/users", q)
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

// FindUserByEmail returns the one user whose email is email. It fails with
// ErrUserNotFound when there is none and ErrAmbiguousUser when there are
// several (Qlik does not require emails to be unique). The tenant compares
// case-insensitively.
func (c *Client) FindUserByEmail(ctx context.Context, bearer, email string) (User, error) {
	if email == "" {
		return User{}, fmt.Errorf("%w: email is empty", ErrInvalidRequest)
	}
	return c.findOne(ctx, bearer, "email eq "+QuoteFilterValue(email))
}

// FindUserBySubject returns the one user whose IdP subject is subject, failing
// like FindUserByEmail.
func (c *Client) FindUserBySubject(ctx context.Context, bearer, subject string) (User, error) {
	if subject == "" {
		return User{}, fmt.Errorf("%w: subject is empty", ErrInvalidRequest)
	}
	return c.findOne(ctx, bearer, "subject eq "+QuoteFilterValue(subject))
}

func (c *Client) findOne(ctx context.Context, bearer, filter string) (User, error) {
	users, err := c.FindUsers(ctx, bearer, filter)
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
func (c *Client) CreateUser(ctx context.Context, bearer string, u UserCreate) (User, error) {
	if err := checkBearer(bearer); err != nil {
		return User{}, err
	}
	if u.Subject == "" {
		return User{}, fmt.Errorf("%w: user subject is empty", ErrInvalidRequest)
	}
	_, body, err := c.send(ctx, request{
		endpoint: endpointUsers, method: http.MethodPost, url: c.base + "/api/v1/users", bearer: bearer, body: u,
	})
	if err != nil {
		return User{}, err
	}
	return parseUser(endpointUsers, body)
}

// Me returns the user bearer acts for (GET /api/v1/users/me): for an
// impersonation token, the impersonated user; for client credentials, the
// client's bot user.
func (c *Client) Me(ctx context.Context, bearer string) (User, error) {
	if err := checkBearer(bearer); err != nil {
		return User{}, err
	}
	_, body, err := c.send(ctx, request{
		endpoint: endpointUsersMe, method: http.MethodGet, url: c.base + "/api/v1/users/me", bearer: bearer,
	})
	if err != nil {
		return User{}, err
	}
	return parseUser(endpointUsersMe, body)
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
