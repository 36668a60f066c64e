package config

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// tenantsFile is the YAML file named by QTB_TENANTS_FILE.
//
//	tenants:
//	  - id: acme
//	    url: https://acme.eu.qlikcloud.com
//	    clientId: 0123abcd
//	    clientSecretFile: /etc/qlik-token-broker/acme/client-secret
//	    scope: user_default                 # optional
//	    userLookup: subject                 # optional: userId, subject or email
//	    allowedOrigins: [https://acme.example.com]
//	    adminClientId: 4567ef               # email lookups only
//	    adminClientSecretFile: /etc/.../admin-secret
//	    createUsers: false                  # create unknown emails just in time
//	    proxyPaths: [/api/v1/]              # what /v1/qlik/* may reach
type tenantsFile struct {
	Tenants []tenantEntry `json:"tenants"`
}

type tenantEntry struct {
	ID                    string   `json:"id"`
	URL                   string   `json:"url"`
	ClientID              string   `json:"clientId"`
	ClientSecretFile      string   `json:"clientSecretFile"`
	Scope                 string   `json:"scope,omitempty"`
	UserLookup            string   `json:"userLookup,omitempty"`
	AllowedOrigins        []string `json:"allowedOrigins,omitempty"`
	AdminClientID         string   `json:"adminClientId,omitempty"`
	AdminClientSecretFile string   `json:"adminClientSecretFile,omitempty"`
	CreateUsers           bool     `json:"createUsers,omitempty"`
	ProxyPaths            []string `json:"proxyPaths,omitempty"`
}

// parseTenantsFile decodes and checks a tenants file strictly: unknown keys
// are errors (a typo must not silently drop a setting). Secrets are read
// from their files here, so a broken mount is caught before the swap.
func parseTenantsFile(raw []byte, c config) ([]broker.Tenant, error) {
	var f tenantsFile
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return nil, fmt.Errorf("tenants file: %w", err)
	}
	var errs []error
	tenants := make([]broker.Tenant, 0, len(f.Tenants))
	for i, e := range f.Tenants {
		name := e.ID
		if name == "" {
			name = fmt.Sprintf("#%d", i+1)
		}
		t, err := e.tenant(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", name, err))
			continue
		}
		tenants = append(tenants, t)
	}
	if len(f.Tenants) == 0 {
		errs = append(errs, errors.New("tenants file lists no tenants"))
	}
	return tenants, errors.Join(errs...)
}

func (e tenantEntry) tenant(c config) (broker.Tenant, error) {
	var errs []error
	if e.ClientID == "" {
		errs = append(errs, errors.New("clientId is required"))
	}
	if e.ClientSecretFile == "" {
		errs = append(errs, errors.New("clientSecretFile is required (secrets are never inline)"))
	}
	switch e.UserLookup {
	case "", qlik.FieldUserID, qlik.FieldSubject, "email":
	default:
		errs = append(errs, fmt.Errorf("userLookup must be userId, subject or email, got %q", e.UserLookup))
	}
	for _, o := range e.AllowedOrigins {
		if err := checkOrigin(o); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range e.ProxyPaths {
		if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || strings.Contains(p, "..") {
			errs = append(errs, fmt.Errorf("proxyPaths: %q must be a path prefix like /api/v1/", p))
		}
	}
	client, err := qlik.New(e.URL, qlik.Options{HTTPClient: c.upstreamHTTPClient()})
	if err != nil {
		errs = append(errs, err)
	}
	secret, err := readSecretFile(e.ClientSecretFile)
	if e.ClientSecretFile != "" && err != nil {
		errs = append(errs, fmt.Errorf("clientSecretFile: %w", err))
	}
	var dir broker.Directory
	if e.AdminClientID != "" {
		adminSecret, err := readSecretFile(e.AdminClientSecretFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("adminClientSecretFile: %w", err))
		}
		if client != nil {
			dir = &broker.QlikDirectory{Client: client, CreateUsers: e.CreateUsers,
				Admin: qlik.Credentials{ClientID: e.AdminClientID, ClientSecret: string(adminSecret)}}
		}
	} else if e.UserLookup == "email" || e.CreateUsers {
		errs = append(errs, errors.New("email lookups need adminClientId and adminClientSecretFile"))
	}
	if len(errs) > 0 {
		return broker.Tenant{}, errors.Join(errs...)
	}
	scope := e.Scope
	if scope == "" {
		scope = c.Scope
	}
	return broker.Tenant{
		ID:             e.ID,
		URL:            client.BaseURL(),
		Issuer:         client,
		Credentials:    qlik.Credentials{ClientID: e.ClientID, ClientSecret: string(secret)},
		Scope:          scope,
		UserLookup:     e.UserLookup,
		ReloadSecret:   secretReloader(e.ClientSecretFile),
		AllowedOrigins: e.AllowedOrigins,
		Directory:      dir,
		ProxyPaths:     e.ProxyPaths,
	}, nil
}

// singleTenant is the registry of one built from the QTB_TENANT_URL,
// QTB_CLIENT_* variables.
func (c config) singleTenant() (broker.Tenant, error) {
	client, err := qlik.New(c.TenantURL, qlik.Options{HTTPClient: c.upstreamHTTPClient()})
	if err != nil {
		return broker.Tenant{}, fmt.Errorf("QTB_TENANT_URL: %w", err)
	}
	t := broker.Tenant{
		ID:           "default",
		URL:          client.BaseURL(),
		Issuer:       client,
		Credentials:  qlik.Credentials{ClientID: c.ClientID, ClientSecret: string(c.ClientSecret)},
		Scope:        c.Scope,
		ReloadSecret: secretReloader(c.ClientSecretFile),
	}
	if c.AdminClientID != "" {
		t.Directory = &broker.QlikDirectory{Client: client, CreateUsers: c.CreateUsers,
			Admin: qlik.Credentials{ClientID: c.AdminClientID, ClientSecret: string(c.AdminClientSecret)}}
	}
	return t, nil
}

// secretReloader re-reads a secret file, for rotation; nil without a file.
func secretReloader(path string) func() (string, error) {
	if path == "" {
		return nil
	}
	return func() (string, error) {
		s, err := readSecretFile(path)
		return string(s), err
	}
}

// loadTenants returns the registry the configuration describes.
func (c config) loadTenants() ([]broker.Tenant, error) {
	if c.TenantsFile == "" {
		t, err := c.singleTenant()
		return []broker.Tenant{t}, err
	}
	raw, err := os.ReadFile(c.TenantsFile)
	if err != nil {
		return nil, fmt.Errorf("QTB_TENANTS_FILE: %w", err)
	}
	return parseTenantsFile(raw, c)
}

// notifyHUP starts catching SIGHUP (before the watcher goroutine runs, so
// an early signal cannot kill the process) until stop is called.
func notifyHUP() (ch <-chan os.Signal, stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// watchTenants reloads the tenants file when its content changes (polled,
// which also sees Kubernetes' ConfigMap symlink swaps) or on SIGHUP, until
// ctx is done. A file that fails to parse or validate is logged and
// ignored: the previous registry stays.
func watchTenants(ctx context.Context, c config, b *broker.Broker, log *slog.Logger, every time.Duration, hup <-chan os.Signal) {
	var last [sha256.Size]byte
	if raw, err := os.ReadFile(c.TenantsFile); err == nil {
		last = sha256.Sum256(raw)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-hup:
			forced = true
		}
		raw, err := os.ReadFile(c.TenantsFile)
		if err != nil {
			log.Error("tenants file unreadable; keeping the current tenants", "err", err)
			continue
		}
		sum := sha256.Sum256(raw)
		if !forced && bytes.Equal(sum[:], last[:]) {
			continue
		}
		last = sum
		tenants, err := parseTenantsFile(raw, c)
		if err == nil {
			err = b.SetTenants(tenants)
		}
		if err != nil {
			log.Error("tenants file rejected; keeping the current tenants", "err", err)
			continue
		}
		log.Info("tenants reloaded", "tenants", b.TenantIDs())
	}
}
