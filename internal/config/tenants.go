package config

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// TenantsFile is the YAML file named by QTB_TENANTS_FILE, which the
// provision command also writes.
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
//	    adminScope: admin.users             # default QTB_ADMIN_SCOPE
//	    jitSubjectPrefix: "qtb-jit|"        # default QTB_JIT_SUBJECT_PREFIX
//	    groupsClaim: groups                 # default QTB_GROUPS_CLAIM; needs adminClientId
//	    groupsPrefix: "acme-"               # default QTB_GROUPS_PREFIX
//	    proxyPaths: [/api/v1/]              # what /v1/qlik/* may reach
type TenantsFile struct {
	Tenants []TenantEntry `json:"tenants"`
}

// TenantEntry is one tenant of a tenants file. Secrets are never inline:
// the entry names the files that hold them.
type TenantEntry struct {
	ID                    string   `json:"id"`
	URL                   string   `json:"url"`
	ClientID              string   `json:"clientId"`
	ClientSecretFile      string   `json:"clientSecretFile,omitempty"`
	Scope                 string   `json:"scope,omitempty"`
	UserLookup            string   `json:"userLookup,omitempty"`
	AllowedOrigins        []string `json:"allowedOrigins,omitempty"`
	AdminClientID         string   `json:"adminClientId,omitempty"`
	AdminClientSecretFile string   `json:"adminClientSecretFile,omitempty"`
	CreateUsers           bool     `json:"createUsers,omitempty"`
	AdminScope            string   `json:"adminScope,omitempty"`
	JITSubjectPrefix      string   `json:"jitSubjectPrefix,omitempty"`
	GroupsClaim           string   `json:"groupsClaim,omitempty"`
	GroupsPrefix          string   `json:"groupsPrefix,omitempty"`
	ProxyPaths            []string `json:"proxyPaths,omitempty"`
	// Private Key JWT instead of clientSecretFile / adminClientSecretFile.
	ClientKeyFile      string `json:"clientKeyFile,omitempty"`
	ClientKeyID        string `json:"clientKeyId,omitempty"`
	ClientKeyAlg       string `json:"clientKeyAlg,omitempty"`
	AdminClientKeyFile string `json:"adminClientKeyFile,omitempty"`
	AdminClientKeyID   string `json:"adminClientKeyId,omitempty"`
	AdminClientKeyAlg  string `json:"adminClientKeyAlg,omitempty"`
}

// ValidTenantID reports whether id may name a tenant: the broker's rule
// (broker.ValidTenantID), for the code that does not import the broker.
func ValidTenantID(id string) error { return broker.ValidTenantID(id) }

// ParseTenantsFile decodes a tenants file strictly: unknown keys are errors
// (a typo must not silently drop a setting). It reads no secret.
func ParseTenantsFile(raw []byte) (TenantsFile, error) {
	var f TenantsFile
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return TenantsFile{}, tenantsFileError(raw, err)
	}
	return f, nil
}

// Tenant is a tenants-file entry as loaded: the entry and the secrets its
// files hold.
type Tenant struct {
	TenantEntry
	ClientSecret      Secret
	AdminClientSecret Secret
	// The keys of clientKeyFile and adminClientKeyFile.
	ClientKey, AdminClientKey *qlik.SigningKey
	// readErrs are the problems reading its secret files.
	readErrs []error
}

// ReadTenants decodes a tenants file and reads the secret files it names,
// so a broken mount is caught before the tenants are swapped in. Problems
// with the entries, a secret that could not be read included, are left to
// Validate; the error is the file's own (not YAML, unknown keys, empty).
func ReadTenants(raw []byte) ([]Tenant, error) {
	f, err := ParseTenantsFile(raw)
	if err != nil {
		return nil, fmt.Errorf("tenants file: %w", err)
	}
	if len(f.Tenants) == 0 {
		return nil, errors.New("tenants file lists no tenants")
	}
	tenants := make([]Tenant, len(f.Tenants))
	for i, e := range f.Tenants {
		t := Tenant{TenantEntry: e}
		if e.ClientSecretFile != "" {
			if t.ClientSecret, err = ReadSecretFile(e.ClientSecretFile); err != nil {
				t.readErrs = append(t.readErrs, fmt.Errorf("clientSecretFile: %w", err))
			}
		}
		if e.AdminClientID != "" && e.AdminClientSecretFile != "" {
			if t.AdminClientSecret, err = ReadSecretFile(e.AdminClientSecretFile); err != nil {
				t.readErrs = append(t.readErrs, fmt.Errorf("adminClientSecretFile: %w", err))
			}
		}
		t.readKeys()
		tenants[i] = t
	}
	return tenants, nil
}

// checkTenants returns the problems of the tenants, each named by its
// tenant, without I/O.
func checkTenants(tenants []Tenant) error {
	var errs []error
	seen := make(map[string]bool, len(tenants))
	for i, t := range tenants {
		name := t.ID
		if name == "" {
			name = fmt.Sprintf("#%d", i+1)
		}
		if err := t.check(); err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", name, err))
		}
		if seen[t.ID] && t.ID != "" {
			errs = append(errs, fmt.Errorf("tenant %s is listed twice", name))
		}
		seen[t.ID] = true
	}
	return errors.Join(errs...)
}

func (t Tenant) check() error {
	var errs []error
	if t.ID == "" {
		errs = append(errs, errors.New("id is required"))
	} else if err := ValidTenantID(t.ID); err != nil {
		errs = append(errs, err)
	}
	if t.ClientID == "" {
		errs = append(errs, errors.New("clientId is required"))
	}
	if t.ClientSecretFile == "" && t.ClientKeyFile == "" {
		errs = append(errs, errors.New("clientSecretFile is required (secrets are never inline), or clientKeyFile"))
	}
	errs = append(errs, t.checkKeys()...)
	switch t.UserLookup {
	case "", qlik.FieldUserID, qlik.FieldSubject, "email":
	default:
		errs = append(errs, fmt.Errorf("userLookup must be userId, subject or email, got %q", t.UserLookup))
	}
	for _, o := range t.AllowedOrigins {
		if err := CheckOrigin(o); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range t.ProxyPaths {
		if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || strings.Contains(p, "..") {
			errs = append(errs, fmt.Errorf("proxyPaths: %q must be a path prefix like /api/v1/", p))
		}
	}
	if err := checkTenantURL(t.URL); err != nil {
		errs = append(errs, err)
	}
	switch {
	case t.AdminClientID != "" && t.AdminClientSecretFile == "" && t.AdminClientKeyFile == "":
		errs = append(errs, errors.New("adminClientSecretFile is required with adminClientId"))
	case t.AdminClientID == "" && (t.UserLookup == "email" || t.CreateUsers):
		errs = append(errs, errors.New("email lookups need adminClientId and adminClientSecretFile"))
	}
	errs = append(errs, t.checkDirectory()...)
	errs = append(errs, t.checkGroups()...)
	return errors.Join(append(errs, t.readErrs...)...)
}

// BrokerTenants returns the tenants to serve: the tenants file's, or the
// one of the QTB_TENANT_URL and QTB_CLIENT_* settings. Their calls go
// through hc. Validate reports anything it would fail on.
func (c Config) BrokerTenants(hc *http.Client) ([]broker.Tenant, error) {
	if c.TenantsFile == "" {
		t, err := c.singleTenant(hc)
		return []broker.Tenant{t}, err
	}
	return brokerTenants(c.Tenants, c, hc)
}

// ReloadTenants reads a new version of the tenants file as Load does, checks
// it as Validate does, and returns its tenants, or every problem and none.
func (c Config) ReloadTenants(raw []byte, hc *http.Client) ([]broker.Tenant, error) {
	tenants, err := ReadTenants(raw)
	if err == nil {
		err = errors.Join(checkTenants(tenants), inertTenantSettings(tenants, c.UserLookup), tenantsGroupsAdmin(tenants, c.GroupsClaim))
	}
	if err != nil {
		return nil, err
	}
	if len(tenants) > 1 && c.TenantClaim == "" {
		return nil, fmt.Errorf("QTB_TENANT_CLAIM: required with several tenants (the file lists %d): without it every session is refused", len(tenants))
	}
	for _, t := range tenants {
		for _, o := range t.AllowedOrigins {
			if !c.CORSAllowHTTP && insecureOrigin(o) {
				return nil, fmt.Errorf("tenant %q: allowedOrigins %q: http:// is allowed only for loopback hosts; set QTB_CORS_ALLOW_HTTP=true to allow it anyway", t.ID, o)
			}
		}
	}
	return brokerTenants(tenants, c, hc)
}

func brokerTenants(tenants []Tenant, defaults Config, hc *http.Client) ([]broker.Tenant, error) {
	out := make([]broker.Tenant, 0, len(tenants))
	var errs []error
	for _, t := range tenants {
		bt, err := t.tenant(defaults, hc)
		if err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", t.ID, err))
			continue
		}
		out = append(out, bt)
	}
	return out, errors.Join(errs...)
}

func (t Tenant) tenant(defaults Config, hc *http.Client) (broker.Tenant, error) {
	client, err := qlik.New(t.URL, qlik.Options{HTTPClient: hc})
	if err != nil {
		return broker.Tenant{}, err
	}
	var dir broker.Directory
	if t.AdminClientID != "" {
		dir = &broker.QlikDirectory{Client: client, CreateUsers: t.CreateUsers,
			Admin:      qlik.Credentials{ClientID: t.AdminClientID, ClientSecret: string(t.AdminClientSecret), Key: t.AdminClientKey},
			AdminScope: cmp.Or(t.AdminScope, defaults.AdminScope), SubjectPrefix: cmp.Or(t.JITSubjectPrefix, defaults.JITSubjectPrefix),
			ReloadKey: keyReloader(t.AdminClientKeyFile, t.AdminClientKeyID, t.AdminClientKeyAlg)}
	}
	scope := t.Scope
	if scope == "" {
		scope = defaults.Scope
	}
	groupsClaim := cmp.Or(t.GroupsClaim, defaults.GroupsClaim)
	return broker.Tenant{
		Groups:         groupsAdmin(dir, groupsClaim),
		GroupsClaim:    groupsClaim,
		GroupsPrefix:   cmp.Or(t.GroupsPrefix, defaults.GroupsPrefix),
		ID:             t.ID,
		URL:            client.BaseURL(),
		Issuer:         client,
		Credentials:    qlik.Credentials{ClientID: t.ClientID, ClientSecret: string(t.ClientSecret), Key: t.ClientKey},
		ReloadKey:      keyReloader(t.ClientKeyFile, t.ClientKeyID, t.ClientKeyAlg),
		Scope:          scope,
		UserLookup:     t.UserLookup,
		ReloadSecret:   secretReloader(t.ClientSecretFile),
		AllowedOrigins: t.AllowedOrigins,
		Directory:      dir,
		ProxyPaths:     t.ProxyPaths,
	}, nil
}

// singleTenant is the registry of one built from the QTB_TENANT_URL,
// QTB_CLIENT_* variables.
func (c Config) singleTenant(hc *http.Client) (broker.Tenant, error) {
	client, err := qlik.New(c.TenantURL, qlik.Options{HTTPClient: hc})
	if err != nil {
		return broker.Tenant{}, fmt.Errorf("QTB_TENANT_URL: %w", err)
	}
	t := broker.Tenant{
		ID:           "default",
		URL:          client.BaseURL(),
		Issuer:       client,
		Credentials:  qlik.Credentials{ClientID: c.ClientID, ClientSecret: string(c.ClientSecret), Key: c.ClientKey},
		ReloadKey:    keyReloader(c.ClientKeyFile, c.ClientKeyID, c.ClientKeyAlg),
		Scope:        c.Scope,
		ReloadSecret: secretReloader(c.ClientSecretFile),
	}
	if c.AdminClientID != "" {
		t.Directory = &broker.QlikDirectory{Client: client, CreateUsers: c.CreateUsers,
			Admin:      qlik.Credentials{ClientID: c.AdminClientID, ClientSecret: string(c.AdminClientSecret), Key: c.AdminClientKey},
			AdminScope: c.AdminScope, SubjectPrefix: c.JITSubjectPrefix,
			ReloadKey: keyReloader(c.AdminClientKeyFile, c.AdminClientKeyID, c.AdminClientKeyAlg)}
	}
	t.Groups, t.GroupsClaim, t.GroupsPrefix = groupsAdmin(t.Directory, c.GroupsClaim), c.GroupsClaim, c.GroupsPrefix
	return t, nil
}

// secretReloader re-reads a secret file, for rotation; nil without a file.
func secretReloader(path string) func() (string, error) {
	if path == "" {
		return nil
	}
	return func() (string, error) {
		s, err := ReadSecretFile(path)
		return string(s), err
	}
}
