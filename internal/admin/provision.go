package admin

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

const provisionUsage = `Usage: qlik-token-broker provision --tenant-url URL --tenant-id ID --registry-out FILE --secret-out FILE [flags]

Makes a tenant ready for the broker, idempotently: finds the impersonation
OAuth client by name or creates it (web; grants client_credentials and
urn:qlik:oauth:user-impersonation; scope user_default; the given origins and
redirect URIs), sets its consent to trusted, and writes the tenant's entry of
the tenants file (QTB_TENANTS_FILE) and a Kubernetes Secret holding the client
secret, both mode 0600. A second run changes nothing. An existing client that
lacks a setting is reported, and corrected only with --fix. The secret is
never printed unless --show-secret. With --auth private-key-jwt the client
proves itself with a key pair instead (generated, or --private-key-file /
--public-key-file): the tenant gets the public JWK, the Secret the private
key (key client-key.pem); --rotate-key adds a new key beside the old and
--finish removes the old.

Flags:
`

// Secret key of the client secret in the Kubernetes Secret, and so the file
// name under the mount directory.
const secretKey = "client-secret"

// What the broker needs of its impersonation client (shared/qlik-api.md, 5).
var (
	impersonationGrants = []string{qlik.GrantClientCredentials, qlik.GrantImpersonation}
	impersonationScopes = []string{"user_default"}
)

// dnsSubdomainLabel is what Kubernetes accepts as the name of a Secret.
var dnsSubdomainLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

type provisionOptions struct {
	admin          adminOptions
	tenantID       string
	clientName     string
	origins        stringList
	redirectURIs   stringList
	secretMountDir string
	secretName     string
	registryOut    string
	secretOut      string
	fix            bool
	rotateSecret   bool
	dryRun         bool
	showSecret     bool
	keys           keyOptions
}

func (o *provisionOptions) register(fs *flag.FlagSet) {
	o.admin.register(fs)
	fs.StringVar(&o.tenantID, "tenant-id", "", "the tenant's id in the tenants file, as sessions name it (required)")
	fs.StringVar(&o.clientName, "client-name", "qlik-token-broker", "name of the impersonation client to find or create")
	fs.Var(&o.origins, "origin", "browser origin allowed to use the tokens, scheme://host[:port]; repeatable or comma separated")
	fs.Var(&o.redirectURIs, "redirect-uri", "redirect URI of the client; repeatable or comma separated")
	fs.StringVar(&o.secretMountDir, "secret-mount-dir", "", "where the Secret is mounted in the broker's pod (default /etc/qlik-token-broker/<tenant-id>)")
	fs.StringVar(&o.secretName, "secret-name", "", "name of the Kubernetes Secret (default qtb-<tenant-id>)")
	fs.StringVar(&o.registryOut, "registry-out", "", "tenants file to write the tenant's entry into, keeping the other tenants (required)")
	fs.StringVar(&o.secretOut, "secret-out", "", "file to write the Secret manifest to (required)")
	fs.BoolVar(&o.fix, "fix", false, "correct an existing client that lacks a setting, and make a new secret when the stored one is missing or invalid")
	fs.BoolVar(&o.rotateSecret, "rotate-secret", false, "make a new client secret even when the stored one works (older secrets keep working until deleted)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be done; change nothing at the tenant or on disk")
	fs.BoolVar(&o.showSecret, "show-secret", false, "print the client secret")
	o.keys.register(fs)
}

func (o *provisionOptions) validate() error {
	var errs []error
	switch {
	case o.tenantID == "":
		errs = append(errs, errors.New("--tenant-id is required"))
	default:
		if err := config.ValidTenantID(o.tenantID); err != nil {
			errs = append(errs, fmt.Errorf("--tenant-id: %w (the broker refuses any other)", err))
		}
	}
	if strings.TrimSpace(o.clientName) == "" {
		errs = append(errs, errors.New("--client-name must not be empty"))
	}
	if o.registryOut == "" {
		errs = append(errs, errors.New("--registry-out is required"))
	}
	if err := o.keys.validate(); err != nil {
		errs = append(errs, err)
	}
	if o.secretOut == "" {
		errs = append(errs, errors.New("--secret-out is required"))
	}
	if o.registryOut != "" && filepath.Clean(o.registryOut) == filepath.Clean(o.secretOut) {
		errs = append(errs, errors.New("--registry-out and --secret-out must differ"))
	}
	for _, origin := range o.origins {
		if err := config.CheckOrigin(origin); err != nil {
			errs = append(errs, fmt.Errorf("--origin: %w", err))
		}
	}
	for _, u := range o.redirectURIs {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			errs = append(errs, fmt.Errorf("--redirect-uri %q: want an absolute http(s) URL", u))
		}
	}
	if o.secretMountDir == "" {
		o.secretMountDir = "/etc/qlik-token-broker/" + o.tenantID
	}
	if !path.IsAbs(o.secretMountDir) {
		errs = append(errs, fmt.Errorf("--secret-mount-dir %q: want an absolute path in the broker's container", o.secretMountDir))
	}
	if o.secretName == "" {
		o.secretName = "qtb-" + o.tenantID
	}
	if len(o.secretName) > 253 || !dnsSubdomainLabel.MatchString(o.secretName) {
		errs = append(errs, fmt.Errorf("secret name %q is not a Kubernetes name (lower-case letters, digits, '-', '.'): set --secret-name", o.secretName))
	}
	return errors.Join(errs...)
}

// Provision is `qlik-token-broker provision`: args are what follows
// "provision". It prints what it did, or would do, on stdout.
func Provision(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o provisionOptions
	o.register(fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, provisionUsage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fmt.Fprint(stdout, adminFlagsUsage)
		return nil
	}
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("provision: unexpected arguments %q", pos)
	}
	if err := o.validate(); err != nil {
		return fmt.Errorf("provision: invalid flags:\n%w", indent(err))
	}

	// Local state first: a file that cannot be read or a directory that
	// does not exist stops the run before anything changes at the tenant.
	p := &provisioner{o: o, out: stdout}
	if p.manifest, err = readSecretManifest(o.secretOut); err != nil {
		return fmt.Errorf("provision: --secret-out: %w", err)
	}
	if p.registry, p.registryExists, err = readRegistry(o.registryOut); err != nil {
		return fmt.Errorf("provision: --registry-out: %w", err)
	}
	for _, f := range []string{o.secretOut, o.registryOut} {
		if st, err := os.Stat(filepath.Dir(f)); err != nil || !st.IsDir() {
			return fmt.Errorf("provision: directory of %s does not exist", f)
		}
	}

	if p.api, err = o.admin.connect(ctx, getenv); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	defer p.api.close(ctx)
	if err := p.run(ctx); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	return nil
}

// provisioner is one run of `provision`.
type provisioner struct {
	o              provisionOptions
	api            *adminAPI
	out            io.Writer
	manifest       *secretManifest    // the Secret at --secret-out; nil when absent
	registry       config.TenantsFile // the tenants file at --registry-out
	registryExists bool
	actions        []string // done, or planned in a dry run
	problems       []string // what the client lacks, left as it is without --fix
}

// Placeholders for what a dry run would get from the tenant.
const (
	plannedClientID = "<new client id>"
	plannedSecret   = "<new client secret>"
)

// act records an action: planned is what a dry run prints, done what a
// real run prints once it happened.
func (p *provisioner) act(planned, done string) {
	if p.o.dryRun {
		p.actions = append(p.actions, "would "+planned)
	} else {
		p.actions = append(p.actions, done)
	}
}

func (p *provisioner) run(ctx context.Context) error {
	c, found, err := p.findClient(ctx)
	if err != nil {
		return err
	}
	var sec string
	switch {
	case p.keyAuth() && found:
		err = p.reconcileKey(ctx, &c)
	case p.keyAuth():
		err = p.createWithKey(ctx, &c)
	case found:
		sec, err = p.reconcile(ctx, &c)
	default:
		sec, err = p.create(ctx, &c)
	}
	if err != nil {
		return err
	}
	if len(p.problems) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "client %q (id %s) is not ready for the broker, and nothing was changed:", c.ClientName, c.ClientID)
		for _, pr := range p.problems {
			b.WriteString("\n  - " + pr)
		}
		b.WriteString("\nrun again with --fix to correct it")
		return errors.New(b.String())
	}
	if !p.keyAuth() {
		if err := p.saveSecret(sec); err != nil {
			return err
		}
	}
	if err := p.saveRegistry(c.ClientID); err != nil {
		return err
	}

	for _, a := range p.actions {
		fmt.Fprintln(p.out, a)
	}
	switch {
	case len(p.actions) == 0:
		fmt.Fprintf(p.out, "nothing to do: client %q (id %s) of tenant %s is ready\n", c.ClientName, c.ClientID, p.o.tenantID)
	case p.o.dryRun:
		fmt.Fprintln(p.out, "dry run: nothing was changed")
	}
	if p.o.showSecret && sec != plannedSecret && !p.keyAuth() { // a private key is never printed
		fmt.Fprintf(p.out, "client secret: %s\n", sec)
	}
	return nil
}

// findClient finds the client named --client-name. The filter compares
// case-insensitively, so only exact names count; two are ambiguous.
func (p *provisioner) findClient(ctx context.Context) (qlik.OAuthClient, bool, error) {
	cs, err := p.api.admin.ListOAuthClients(ctx, qlik.ListOptions{
		Filter: "clientName eq " + qlik.QuoteFilterValue(p.o.clientName),
	})
	if err != nil {
		return qlik.OAuthClient{}, false, fmt.Errorf("finding client %q: %w", p.o.clientName, explain(err))
	}
	cs = slices.DeleteFunc(cs, func(c qlik.OAuthClient) bool { return c.ClientName != p.o.clientName })
	switch len(cs) {
	case 0:
		return qlik.OAuthClient{}, false, nil
	case 1:
		return cs[0], true, nil
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ClientID
	}
	return qlik.OAuthClient{}, false, fmt.Errorf("%d clients are named %q (%s): rename or delete all but one, or pass another --client-name",
		len(cs), p.o.clientName, strings.Join(ids, ", "))
}

// create makes the client, saves its secret at once (the tenant shows it
// only now) and trusts it.
func (p *provisioner) create(ctx context.Context, c *qlik.OAuthClient) (string, error) {
	req := qlik.OAuthClientCreate{
		AppType:           qlik.AppTypeWeb,
		ClientName:        p.o.clientName,
		Description:       "qlik-token-broker: user impersonation for tenant " + p.o.tenantID,
		AllowedScopes:     impersonationScopes,
		AllowedGrantTypes: impersonationGrants,
		AllowedOrigins:    p.o.origins,
		RedirectURIs:      p.o.redirectURIs,
	}
	if p.o.dryRun {
		*c = qlik.OAuthClient{ClientID: plannedClientID, ClientName: p.o.clientName}
		p.act(fmt.Sprintf("create client %q", p.o.clientName), "")
		p.act("set consent trusted", "")
		return plannedSecret, nil
	}
	created, err := p.api.admin.CreateOAuthClient(ctx, req)
	if err != nil {
		return "", fmt.Errorf("creating client %q: %w", p.o.clientName, explain(err))
	}
	*c = created
	p.act("", fmt.Sprintf("created client %q (id %s)", c.ClientName, c.ClientID))
	if c.ClientSecret == "" {
		return "", fmt.Errorf("client %s was created without a secret", c.ClientID)
	}
	if err := p.saveSecret(c.ClientSecret); err != nil {
		return "", fmt.Errorf("client %s was created but its secret could not be saved (%w); run again with --rotate-secret", c.ClientID, err)
	}
	if err := p.trust(ctx, c); err != nil {
		return "", err
	}
	return c.ClientSecret, nil
}

// trust sets the consent method of c to trusted unless it is.
func (p *provisioner) trust(ctx context.Context, c *qlik.OAuthClient) error {
	if c.ConsentMethod == qlik.ConsentTrusted {
		return nil
	}
	if !p.o.dryRun {
		if err := p.api.admin.SetConsent(ctx, c.ClientID, qlik.ConsentTrusted); err != nil {
			return fmt.Errorf("setting consent of client %s to trusted: %w", c.ClientID, explain(err))
		}
	}
	c.ConsentMethod = qlik.ConsentTrusted
	p.act("set consent trusted", "set consent trusted")
	return nil
}

// drift is a list member of the client that lacks values the broker needs.
type drift struct {
	path    string // JSON Patch path, e.g. /allowedOrigins
	have    []string
	missing []string
}

func (d drift) String() string {
	return fmt.Sprintf("%s lacks %s", strings.TrimPrefix(d.path, "/"), strings.Join(d.missing, ", "))
}

// drifts compares c with what the broker needs. Values beyond those are
// left alone: an admin may have allowed more.
func (p *provisioner) drifts(c qlik.OAuthClient) []drift {
	var ds []drift
	for _, m := range []struct {
		path       string
		have, want []string
	}{
		{"/allowedGrantTypes", c.AllowedGrantTypes, impersonationGrants},
		{"/allowedScopes", c.AllowedScopes, impersonationScopes},
		{"/allowedOrigins", c.AllowedOrigins, p.o.origins},
		{"/redirectUris", c.RedirectURIs, p.o.redirectURIs},
	} {
		var missing []string
		for _, w := range m.want {
			if !slices.Contains(m.have, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) > 0 {
			ds = append(ds, drift{m.path, m.have, missing})
		}
	}
	// A tenant that does not list auth methods uses client_secret.
	methods := c.AllowedAuthMethods
	if len(methods) == 0 {
		methods = []string{methodClientSecret}
	}
	if want := p.wantAuthMethod(); !slices.Contains(methods, want) {
		ds = append(ds, drift{"/allowedAuthMethods", methods, []string{want}})
	}
	return ds
}

// reconcile checks an existing client, corrects it with --fix, and returns
// the secret to store: the stored one when it still works, else a new one
// (with --fix or --rotate-secret).
func (p *provisioner) reconcile(ctx context.Context, c *qlik.OAuthClient) (string, error) {
	if c.AppType != qlik.AppTypeWeb {
		return "", fmt.Errorf("client %q (id %s) is a %s client, which cannot use the impersonation grant and cannot change type: delete it or pass another --client-name",
			c.ClientName, c.ClientID, c.AppType)
	}
	var sec string
	if ds := p.drifts(*c); len(ds) > 0 {
		if !p.o.fix {
			for _, d := range ds {
				p.problems = append(p.problems, d.String())
			}
		} else {
			newSecret, err := p.patch(ctx, c, ds)
			if err != nil {
				return "", err
			}
			sec = newSecret
		}
	}

	if c.ConsentMethod == "" { // not every tenant includes connectionConfig
		m, err := p.api.admin.GetConsent(ctx, c.ClientID)
		if err != nil {
			return "", fmt.Errorf("reading consent of client %s: %w", c.ClientID, explain(err))
		}
		c.ConsentMethod = m
	}
	if c.ConsentMethod != qlik.ConsentTrusted {
		if !p.o.fix {
			p.problems = append(p.problems, fmt.Sprintf("consent is %s, want trusted (impersonation fails until it is)", c.ConsentMethod))
		} else if err := p.trust(ctx, c); err != nil {
			return "", err
		}
	}

	if sec != "" { // the patch made one
		return sec, nil
	}
	stored := p.manifest.clientSecret()
	reason := p.o.secretOut + " does not exist"
	if p.manifest != nil {
		reason = p.o.secretOut + " holds no " + secretKey
	}
	if stored != "" && !p.o.rotateSecret {
		valid, err := p.verify(ctx, *c, stored)
		if err != nil {
			return "", err
		}
		if valid {
			return stored, nil
		}
		reason = "the secret in " + p.o.secretOut + " is not valid for this client (rotated or deleted?)"
	}
	if !p.o.rotateSecret && (!p.o.fix || len(p.problems) > 0) {
		p.problems = append(p.problems, "client secret unknown: "+reason+"; Qlik shows a secret only once, so --fix or --rotate-secret makes a new one")
	}
	if len(p.problems) > 0 { // report only: nothing changes while problems remain
		return "", nil
	}
	return p.newSecret(ctx, c)
}

// patch adds what ds lack with one JSON Patch, keeping the values the client
// has. It returns the secret the tenant makes when the patch enables
// client_secret authentication, saved at once.
func (p *provisioner) patch(ctx context.Context, c *qlik.OAuthClient, ds []drift) (string, error) {
	ops := make([]qlik.PatchOp, len(ds))
	what := make([]string, len(ds))
	for i, d := range ds {
		ops[i] = qlik.PatchOp{Op: "replace", Path: d.path, Value: append(slices.Clone(d.have), d.missing...)}
		what[i] = strings.TrimPrefix(d.path, "/") + " += " + strings.Join(d.missing, ", ")
	}
	msg := fmt.Sprintf("client %s: %s", c.ClientID, strings.Join(what, "; "))
	var sec string
	if !p.o.dryRun {
		var err error
		if sec, err = p.api.admin.UpdateOAuthClient(ctx, c.ClientID, ops); err != nil {
			return "", fmt.Errorf("updating client %s: %w", c.ClientID, explain(err))
		}
	}
	p.act("update "+msg, "updated "+msg)
	for _, d := range ds {
		all := append(slices.Clone(d.have), d.missing...)
		switch d.path {
		case "/allowedGrantTypes":
			c.AllowedGrantTypes = all
		case "/allowedScopes":
			c.AllowedScopes = all
		case "/allowedOrigins":
			c.AllowedOrigins = all
		case "/redirectUris":
			c.RedirectURIs = all
		case "/allowedAuthMethods":
			c.AllowedAuthMethods = all
		}
	}
	if sec != "" {
		p.act("", "the tenant made a client secret, as client_secret authentication was enabled")
		if err := p.saveSecret(sec); err != nil {
			return "", fmt.Errorf("client %s has a new secret that could not be saved (%w); run again with --rotate-secret", c.ClientID, err)
		}
	}
	return sec, nil
}

// newSecret asks the tenant for a new secret of c and saves it at once.
func (p *provisioner) newSecret(ctx context.Context, c *qlik.OAuthClient) (string, error) {
	if p.o.dryRun {
		p.act("create a new client secret", "")
		return plannedSecret, nil
	}
	s, err := p.api.admin.CreateClientSecret(ctx, c.ClientID)
	if err != nil {
		return "", fmt.Errorf("creating a secret for client %s: %w", c.ClientID, explain(err))
	}
	p.act("", fmt.Sprintf("created client secret %s (older secrets keep working until deleted with `clients secrets delete`)", s.Hint))
	if err := p.saveSecret(s.ClientSecret); err != nil {
		return "", fmt.Errorf("client %s has a new secret that could not be saved (%w); run again with --rotate-secret", c.ClientID, err)
	}
	return s.ClientSecret, nil
}

// verify reports whether sec authenticates client c, by asking for a
// client_credentials token (a read: no admin API write) and revoking it. A
// client that may not use that grant cannot be checked; its secret is
// trusted, and the missing grant is reported as a problem anyway.
func (p *provisioner) verify(ctx context.Context, c qlik.OAuthClient, sec string) (bool, error) {
	if !slices.Contains(c.AllowedGrantTypes, qlik.GrantClientCredentials) {
		return true, nil
	}
	creds := qlik.Credentials{ClientID: c.ClientID, ClientSecret: sec}
	tok, err := p.api.qlik.ClientCredentialsToken(ctx, creds, "")
	var qe *qlik.Error
	switch {
	case errors.As(err, &qe) && (qe.StatusCode == 400 || qe.StatusCode == 401):
		// The client exists and may use the grant: a refusal is the
		// secret's (a real tenant answers a wrong one with a 400).
		return false, nil
	case err != nil:
		return false, fmt.Errorf("checking the stored secret of client %s: %w", c.ClientID, explain(err))
	}
	_ = p.api.qlik.Revoke(ctx, creds, tok.AccessToken) // tidiness only
	return true, nil
}
