package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// adminEarlyExpiry is how long before its expiry the directory's admin
// token is replaced, so a lookup never goes out with one about to lapse.
const adminEarlyExpiry = 5 * time.Minute

// Defaults of QlikDirectory.
const (
	// DefaultAdminScope is the scope the directory's admin token asks for.
	// The users API also accepts AdminScopeUsers.
	DefaultAdminScope = "admin_classic"
	// AdminScopeUsers is the narrower scope the users API accepts.
	AdminScopeUsers = "admin.users"
	// DefaultJITSubjectPrefix namespaces the subjects of users created
	// just in time: "qtb-jit|" + email. No IdP issues subjects of that
	// form (Auth0 and Okta use "provider|id" with their own provider
	// names, Entra and others opaque ids), so a created user cannot take
	// the subject a real IdP user will log in with.
	DefaultJITSubjectPrefix = "qtb-jit|"
)

// QlikDirectory finds users through a tenant's users API with an admin
// client's credentials (client_credentials, scope AdminScope). The admin
// token comes from a qlik.ReuseTokenSource, kept until 5 minutes before it
// expires.
type QlikDirectory struct {
	Client *qlik.Client
	Admin  qlik.Credentials
	// AdminScope is the scope of the admin token: admin_classic (the
	// default when empty) or admin.users.
	AdminScope string
	// CreateUsers creates a user for an unknown email (just-in-time
	// provisioning, as Qlik's own impersonation sample does).
	CreateUsers bool
	// SubjectPrefix is put before the email to make the subject of a user
	// created just in time; empty means DefaultJITSubjectPrefix.
	SubjectPrefix string
	// Now is the clock the admin token's expiry is judged by; nil means
	// time.Now.
	Now func() time.Time
	// ReloadKey, when set, re-reads the admin client's signing key after
	// the tenant refuses it (a rotated key file).
	ReloadKey func() (*qlik.SigningKey, error)

	once      sync.Once
	api       *qlik.Admin
	keySource *keyReloadingSource // with ReloadKey and a key

	groupsOnce sync.Once
	groups     *qlik.Admin
}

var _ Directory = (*QlikDirectory)(nil)

// admin returns the admin APIs, built on first use because the fields are
// set by a struct literal.
func (d *QlikDirectory) admin() *qlik.Admin {
	d.once.Do(func() {
		now := d.Now
		if now == nil {
			now = time.Now
		}
		scope := d.AdminScope
		if scope == "" {
			scope = DefaultAdminScope
		}
		src := d.adminSource(scope)
		d.api = d.Client.Admin(qlik.ReuseTokenSource(src, adminEarlyExpiry, now))
	})
	return d.api
}

// Groups returns the admin APIs a groups sync calls (groups.go) with the
// same admin client: the directory's own when its scope is admin_classic;
// otherwise ones with an admin_classic token, since Qlik has no scope for
// groups and admin.users does not cover them.
func (d *QlikDirectory) Groups() *qlik.Admin {
	if d.AdminScope == "" || d.AdminScope == DefaultAdminScope {
		return d.admin()
	}
	d.groupsOnce.Do(func() {
		now := d.Now
		if now == nil {
			now = time.Now
		}
		var src qlik.TokenSource = d.Client.ClientCredentials(d.Admin, DefaultAdminScope)
		if d.ReloadKey != nil && d.Admin.Key != nil {
			src = &keyReloadingSource{client: d.Client, reload: d.ReloadKey, scope: DefaultAdminScope, creds: d.Admin}
		}
		d.groups = d.Client.Admin(qlik.ReuseTokenSource(src, adminEarlyExpiry, now))
	})
	return d.groups
}

// UserIDByEmail implements Directory. Only active users match: an email
// that also belongs to deleted users maps to the active one. With
// CreateUsers, an email no active user has becomes a new active user with
// the subject SubjectPrefix+email, unless a user with that email is
// disabled, invited or provisioned (creating a twin would step around the
// tenant's decision); when that subject exists already (409), its user is
// used if it has this email and is active.
func (d *QlikDirectory) UserIDByEmail(ctx context.Context, email string) (string, error) {
	api := d.admin()
	u, err := api.FindUserByEmail(ctx, email)
	switch {
	case errors.Is(err, qlik.ErrUserNotFound) && d.CreateUsers:
		return d.create(ctx, api, email)
	case errors.Is(err, qlik.ErrUserNotFound):
		return "", fmt.Errorf("%w: no active user has this email and creating users is off", ErrUnknownUser)
	case err != nil:
		return "", err
	}
	if u.Status != "" && u.Status != qlik.UserActive {
		return "", fmt.Errorf("%w: the user is %s", ErrUnknownUser, u.Status)
	}
	return u.ID, nil
}

// create makes the user for email just in time.
func (d *QlikDirectory) create(ctx context.Context, api *qlik.Admin, email string) (string, error) {
	others, err := api.FindUsers(ctx, "email eq "+qlik.QuoteFilterValue(email))
	if err != nil {
		return "", fmt.Errorf("broker: create user: %w", err)
	}
	for _, o := range others {
		if o.Status != qlik.UserDeleted {
			return "", fmt.Errorf("%w: the tenant's user with this email is %s; not creating another", ErrUnknownUser, o.Status)
		}
	}
	prefix := d.SubjectPrefix
	if prefix == "" {
		prefix = DefaultJITSubjectPrefix
	}
	subject := prefix + email
	u, err := api.CreateUser(ctx, qlik.UserCreate{Name: email, Email: email, Subject: subject, Status: qlik.UserActive})
	var qe *qlik.Error
	if errors.As(err, &qe) && qe.StatusCode == 409 {
		// Another replica created it first, or an earlier run did.
		u, err = api.FindUserBySubject(ctx, subject)
		switch {
		case err != nil:
			return "", fmt.Errorf("broker: create user: the subject exists (409, traceId %s) but looking it up failed: %w", qe.TraceID, err)
		case !strings.EqualFold(u.Email, email):
			return "", fmt.Errorf("%w: just-in-time creation: the subject for this email belongs to user %s, whose email differs", ErrUnknownUser, u.ID)
		case u.Status != qlik.UserActive:
			return "", fmt.Errorf("%w: just-in-time creation: the user with this subject is %s", ErrUnknownUser, u.Status)
		}
		return u.ID, nil
	}
	if err != nil {
		return "", fmt.Errorf("broker: create user: %w", err)
	}
	return u.ID, nil
}
