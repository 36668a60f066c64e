package broker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestQlikDirectory: lookups share one admin token until 5 minutes before
// it expires by the directory's clock; unknown and inactive users are
// ErrUnknownUser unless creating users is on.
func TestQlikDirectory(t *testing.T) {
	clk := newClock()
	tn, err := qliktest.New(qliktest.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	hc := qlik.NewHTTPClient(5 * time.Second)
	t.Cleanup(hc.CloseIdleConnections)
	client, err := qlik.New(tn.URL(), qlik.Options{HTTPClient: hc, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	admin := tn.AddAdminClient()
	creds := qlik.Credentials{ClientID: admin.ID, ClientSecret: admin.Secret}
	ada := tn.AddUser(qliktest.User{Name: "Ada", Email: "ada@example.com", Status: qlik.UserActive})
	tn.AddUser(qliktest.User{Name: "Inv", Email: "inv@example.com", Status: qlik.UserInvited})
	d := &broker.QlikDirectory{Client: client, Admin: creds, Now: clk.Now}
	ctx := t.Context()

	tn.ResetCounters()
	for range 3 {
		if id, err := d.UserIDByEmail(ctx, "ada@example.com"); err != nil || id != ada.ID {
			t.Fatalf("UserIDByEmail = %q, %v; want %s", id, err, ada.ID)
		}
	}
	if n := tn.Calls(qliktest.EndpointToken); n != 1 {
		t.Errorf("%d admin tokens for 3 lookups, want 1", n)
	}
	clk.Advance(6*time.Hour - 5*time.Minute - time.Second)
	if _, err := d.UserIDByEmail(ctx, "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	if n := tn.Calls(qliktest.EndpointToken); n != 1 {
		t.Errorf("%d admin tokens, want 1: the token had 5m1s left", n)
	}
	clk.Advance(time.Second)
	if _, err := d.UserIDByEmail(ctx, "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	if n := tn.Calls(qliktest.EndpointToken); n != 2 {
		t.Errorf("%d admin tokens, want 2: the token was 5m from expiry", n)
	}

	for _, email := range []string{"nobody@example.com", "inv@example.com"} {
		if _, err := d.UserIDByEmail(ctx, email); !errors.Is(err, broker.ErrUnknownUser) {
			t.Errorf("%s: %v, want ErrUnknownUser", email, err)
		}
	}
	d.CreateUsers = true
	id, err := d.UserIDByEmail(ctx, "new@example.com")
	if err != nil || id == "" {
		t.Fatalf("create: %q, %v", id, err)
	}
	d.CreateUsers = false
	if again, err := d.UserIDByEmail(ctx, "new@example.com"); err != nil || again != id {
		t.Errorf("after create: %q, %v; want %s", again, err, id)
	}
}
