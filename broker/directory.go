package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// adminEarlyExpiry is how long before its expiry the directory's admin
// token is replaced, so a lookup never goes out with one about to lapse.
const adminEarlyExpiry = 5 * time.Minute

// QlikDirectory finds users through a tenant's users API with an admin
// client's credentials (client_credentials, scope admin_classic). The admin
// token comes from a qlik.ReuseTokenSource, kept until 5 minutes before it
// expires.
type QlikDirectory struct {
	Client *qlik.Client
	Admin  qlik.Credentials
	// CreateUsers creates a user for an unknown email (just-in-time
	// provisioning, as Qlik's own impersonation sample does).
	CreateUsers bool
	// Now is the clock the admin token's expiry is judged by; nil means
	// time.Now.
	Now func() time.Time
	// ReloadKey, when set, re-reads the admin client's signing key after
	// the tenant refuses it (a rotated key file).
	ReloadKey func() (*qlik.SigningKey, error)

	once      sync.Once
	api       *qlik.Admin
	keySource *keyReloadingSource // with ReloadKey and a key
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
		src := d.adminSource()
		d.api = d.Client.Admin(qlik.ReuseTokenSource(src, adminEarlyExpiry, now))
	})
	return d.api
}

// UserIDByEmail implements Directory.
func (d *QlikDirectory) UserIDByEmail(ctx context.Context, email string) (string, error) {
	api := d.admin()
	u, err := api.FindUserByEmail(ctx, email)
	switch {
	case errors.Is(err, qlik.ErrUserNotFound) && d.CreateUsers:
		u, err = api.CreateUser(ctx, qlik.UserCreate{Name: email, Email: email, Subject: email, Status: qlik.UserActive})
		if err != nil {
			return "", fmt.Errorf("broker: create user: %w", err)
		}
	case errors.Is(err, qlik.ErrUserNotFound):
		return "", fmt.Errorf("%w: no user has this email and creating users is off", ErrUnknownUser)
	case err != nil:
		return "", err
	}
	if u.Status != "" && u.Status != qlik.UserActive {
		return "", fmt.Errorf("%w: the user is %s", ErrUnknownUser, u.Status)
	}
	return u.ID, nil
}
