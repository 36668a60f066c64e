package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// demo runs the broker on its embedded defaults: a fake tenant in this
// process, the in-memory cache, and a session key made up on the spot, then
// prints a session token and the curl lines to try it.
func demo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", envOr(getenv, "QTB_LISTEN", "127.0.0.1:8080"), "API listen address (QTB_LISTEN)")
	metricsListen := fs.String("metrics-listen", envOr(getenv, "QTB_METRICS_LISTEN", "127.0.0.1:9090"), "metrics listen address (QTB_METRICS_LISTEN)")
	tenantAddr := fs.String("tenant-listen", "127.0.0.1:0", "address of the fake Qlik tenant")
	logLevel := fs.String("log-level", envOr(getenv, "QTB_LOG_LEVEL", "info"), "log level (QTB_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil // asked for, printed: as serve -h
		}
		return err
	}

	tenant, err := qliktest.NewOnAddr(*tenantAddr)
	if err != nil {
		return fmt.Errorf("demo: start fake tenant: %w", err)
	}
	defer tenant.Close()
	clientSecret := randomHex(32)
	client := tenant.AddClient(qliktest.OAuthClient{ID: "demo-" + randomHex(8), Secret: clientSecret, Name: "qlik-token-broker demo"})
	user := tenant.AddUser(qliktest.User{Name: "Ada Lovelace", Email: "ada@example.com", Subject: "auth0|ada", Status: "active"})

	sessionKey := randomHex(32)
	sessionToken, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user.ID,
		"iss": "qtb-demo",
		"aud": "qlik-token-broker",
		"iat": time.Now().Unix(),
		"exp": time.Now().Add(24 * time.Hour).Unix(),
	}).SignedString([]byte(sessionKey))
	if err != nil {
		return fmt.Errorf("demo: sign session token: %w", err)
	}

	cfg := config.Default()
	cfg.Listen, cfg.MetricsListen, cfg.LogLevel, cfg.LogFormat = *listen, *metricsListen, *logLevel, "text"
	cfg.TenantURL = tenant.URL()
	cfg.ClientID, cfg.ClientSecret = client.ID, config.Secret(clientSecret)
	cfg.SessionHMACSecret = config.Secret(sessionKey)
	cfg.SessionIssuer, cfg.SessionAudience = "qtb-demo", "qlik-token-broker"
	cfg.CORSOrigins = []string{"http://localhost:3000", "http://127.0.0.1:3000"}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	hook, _ := ctx.Value(listenHookKey{}).(listenHook)
	printInstructions := func(api, metricsAddr net.Addr) {
		base := "http://" + api.String()
		fmt.Fprintf(stdout, `qlik-token-broker demo (stop with Ctrl-C)

  fake Qlik tenant  %s
  demo user         %s <%s>, Qlik user id %s
  broker API        %s   (metrics on http://%s/metrics)

Session token of the demo user (HS256, valid 24h):

  %s

Get a Qlik access token as the demo user:

  curl -s -H 'Authorization: Bearer %s' %s/v1/token

Ask the tenant whom that token acts for (users/me is a redirect to the user's own page, so -L):

  curl -sL -H "Authorization: Bearer $(curl -s -H 'Accept: text/plain' -H 'Authorization: Bearer %s' %s/v1/token)" %s/api/v1/users/me

`, tenant.URL(), user.Name, user.Email, user.ID, base, metricsAddr, sessionToken,
			sessionToken, base, sessionToken, base, tenant.URL())
		if hook != nil {
			hook(api, metricsAddr)
		}
	}

	err = serve(ctx, cfg, stderr, printInstructions)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}
