package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// QlikDirectory finds users through a tenant's users API with an admin
// client's credentials (client_credentials, scope admin_classic), keeping
// the admin token until shortly before it expires.
type QlikDirectory struct {
	Client *qlik.Client
	Admin  qlik.Credentials
	// CreateUsers creates a user for an unknown email (just-in-time
	// provisioning, as Qlik's own impersonation sample does).
	CreateUsers bool

	mu    sync.Mutex
	token *qlik.Token
}

var _ Directory = (*QlikDirectory)(nil)

// UserIDByEmail implements Directory.
func (d *QlikDirectory) UserIDByEmail(ctx context.Context, email string) (string, error) {
	bearer, err := d.bearer(ctx)
	if err != nil {
		return "", err
	}
	u, err := d.Client.FindUserByEmail(ctx, bearer, email)
	switch {
	case errors.Is(err, qlik.ErrUserNotFound) && d.CreateUsers:
		u, err = d.Client.CreateUser(ctx, bearer, qlik.UserCreate{Name: email, Email: email, Subject: email, Status: qlik.UserActive})
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

func (d *QlikDirectory) bearer(ctx context.Context) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.token != nil && time.Until(d.token.ExpiresAt) > 5*time.Minute {
		return d.token.AccessToken, nil
	}
	tok, err := d.Client.ClientCredentialsToken(ctx, d.Admin, "admin_classic")
	if err != nil {
		return "", fmt.Errorf("broker: admin token: %w", err)
	}
	d.token = tok
	return tok.AccessToken, nil
}
