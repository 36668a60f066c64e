// Package admin holds the tenant-side commands of qlik-token-broker:
// `clients` manages the tenant's OAuth clients, `provision` makes a
// tenant ready for the broker (its impersonation client, the tenants-file
// entry and the Kubernetes Secret), and `groups` shows a user's groups as
// the tenant sees them. They talk to the tenant's admin APIs
// through qlik.Client, as a tenant admin.
package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// secret is a credential that never prints.
type secret = config.Secret

// adminScope is the scope an admin client's token asks for: the one the
// oauth-clients API requires. Asking for it alone keeps the token no more
// powerful than the command needs.
const adminScope = "admin_classic"

// adminTimeout bounds each call of an admin command to the tenant.
const adminTimeout = 30 * time.Second

const clientsUsage = `Usage: qlik-token-broker clients <command> [arguments] [flags]

Manage the tenant's OAuth clients (/api/v1/oauth-clients).

Commands:
  list                                   list every client
  get <id>                               show one client and its consent method
  create --name N [--app-type web] [--description D] [--scope S]... [--grant G]...
         [--origin O]... [--redirect-uri U]... [--consent trusted|required]
                                         create a client; its secret is shown this once
  update <id> --op add|remove|replace --path /P [--value V]
  update <id> --patch '[{"op":"replace","path":"/clientName","value":"X"}]'
                                         change a client (JSON Patch)
  delete <id>                            delete a client
  secrets create <id>                    add a secret (at most 5); shown this once
  secrets delete <id> <hint>             delete the secret named hint
  consent get <id>                       print the consent method
  consent set <id> trusted|required      set the consent method

Repeatable flags (--scope, --grant, --origin, --redirect-uri) also take comma lists.
`

const adminFlagsUsage = `
Every command talks to --tenant-url (QTB_TENANT_URL) as a tenant admin: either
an admin OAuth client (client_credentials, scope admin_classic) given by
--admin-client-id (QTB_ADMIN_CLIENT_ID) and either --admin-client-secret-file
(QTB_ADMIN_CLIENT_SECRET_FILE or QTB_ADMIN_CLIENT_SECRET) or, for a Private Key
JWT client, --admin-client-key-file (QTB_ADMIN_CLIENT_KEY_FILE, with
--admin-client-key-id/QTB_ADMIN_CLIENT_KEY_ID and
--admin-client-key-alg/QTB_ADMIN_CLIENT_KEY_ALG when not the defaults); or a
bearer token from --token-file (QTB_ADMIN_TOKEN_FILE or QTB_ADMIN_TOKEN).
Flags win over the environment.
`

// adminOptions are the flags of every admin command: the tenant and how to
// authenticate to it. Empty flags fall back to the environment.
type adminOptions struct {
	tenantURL  string
	clientID   string
	secretFile string
	keyFile    string
	keyID      string
	keyAlg     string
	tokenFile  string
}

func (o *adminOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.tenantURL, "tenant-url", "", "the Qlik tenant, e.g. https://acme.eu.qlikcloud.com (QTB_TENANT_URL)")
	fs.StringVar(&o.clientID, "admin-client-id", "", "admin OAuth client with scope admin_classic (QTB_ADMIN_CLIENT_ID)")
	fs.StringVar(&o.secretFile, "admin-client-secret-file", "", "file holding its secret (QTB_ADMIN_CLIENT_SECRET_FILE; or QTB_ADMIN_CLIENT_SECRET)")
	fs.StringVar(&o.keyFile, "admin-client-key-file", "", "PEM private key of a Private Key JWT admin client, instead of a secret (QTB_ADMIN_CLIENT_KEY_FILE)")
	fs.StringVar(&o.keyID, "admin-client-key-id", "", "kid of that key's public half at the tenant (QTB_ADMIN_CLIENT_KEY_ID; default: its RFC 7638 thumbprint)")
	fs.StringVar(&o.keyAlg, "admin-client-key-alg", "", "RS256 or RS512 (RSA) or ES384 (P-384) (QTB_ADMIN_CLIENT_KEY_ALG; default by key type)")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding an admin bearer token, instead of an admin client (QTB_ADMIN_TOKEN_FILE; or QTB_ADMIN_TOKEN)")
}

// adminAPI is an authenticated session on a tenant's admin APIs.
type adminAPI struct {
	qlik  *qlik.Client
	admin *qlik.Admin // the admin APIs, called with bearer
	// bearer is the admin token; it is kept here only for close.
	bearer secret
	// minted holds the admin client's credentials when this run minted
	// bearer, so close can revoke it; nil for a token given by the caller.
	minted *qlik.Credentials
}

// connect resolves the tenant and credentials (flags, then getenv) and, for
// an admin client, mints its token.
func (o adminOptions) connect(ctx context.Context, getenv func(string) string) (*adminAPI, error) {
	tenantURL := cmp.Or(o.tenantURL, getenv("QTB_TENANT_URL"))
	if tenantURL == "" {
		return nil, errors.New("--tenant-url (QTB_TENANT_URL) is required")
	}
	client, err := qlik.New(tenantURL, qlik.Options{HTTPClient: qlik.NewHTTPClient(adminTimeout)})
	if err != nil {
		return nil, fmt.Errorf("--tenant-url: %w", err)
	}

	useToken := o.tokenFile != ""
	useClient := o.clientID != "" || o.secretFile != "" || o.keyFile != ""
	switch {
	case useToken && useClient:
		return nil, errors.New("--token-file and --admin-client-id/--admin-client-secret-file/--admin-client-key-file: give one, not both")
	case !useToken && !useClient: // nothing on the command line: the environment decides
		envToken := getenv("QTB_ADMIN_TOKEN") != "" || getenv("QTB_ADMIN_TOKEN_FILE") != ""
		envClient := getenv("QTB_ADMIN_CLIENT_ID") != ""
		if envToken && envClient {
			return nil, errors.New("QTB_ADMIN_TOKEN(_FILE) and QTB_ADMIN_CLIENT_ID are both set: set one, not both")
		}
		useToken, useClient = envToken, envClient
	}

	if useToken {
		tok, err := pickSecret(o.tokenFile, "--token-file", "QTB_ADMIN_TOKEN", getenv)
		if err != nil {
			return nil, err
		}
		admin := client.Admin(qlik.StaticTokenSource(&qlik.Token{AccessToken: string(tok)}))
		return &adminAPI{qlik: client, admin: admin, bearer: tok}, nil
	}
	if !useClient {
		return nil, errors.New("admin credentials are required: --admin-client-id with --admin-client-secret-file " +
			"or --admin-client-key-file (QTB_ADMIN_CLIENT_ID with QTB_ADMIN_CLIENT_SECRET(_FILE) or QTB_ADMIN_CLIENT_KEY_FILE), " +
			"or --token-file (QTB_ADMIN_TOKEN(_FILE))")
	}
	creds, err := o.clientCredentials(getenv)
	if err != nil {
		return nil, err
	}
	id := creds.ClientID
	tok, err := client.ClientCredentialsToken(ctx, creds, adminScope)
	if err != nil {
		return nil, fmt.Errorf("admin client %s: %w", id, explain(err))
	}
	admin := client.Admin(qlik.StaticTokenSource(tok))
	return &adminAPI{qlik: client, admin: admin, bearer: secret(tok.AccessToken), minted: &creds}, nil
}

// clientCredentials resolves the admin client: its id and either its secret
// or its private key (flags, then getenv), never both.
func (o adminOptions) clientCredentials(getenv func(string) string) (qlik.Credentials, error) {
	id := cmp.Or(o.clientID, getenv("QTB_ADMIN_CLIENT_ID"))
	if id == "" {
		return qlik.Credentials{}, errors.New("--admin-client-id (QTB_ADMIN_CLIENT_ID) is required with an admin client secret or key")
	}
	keyFile, useSecret := o.keyFile, o.secretFile != ""
	switch {
	case keyFile != "" && useSecret:
		return qlik.Credentials{}, errors.New("--admin-client-secret-file and --admin-client-key-file: give one, not both")
	case keyFile == "" && !useSecret: // the environment decides
		keyFile = getenv("QTB_ADMIN_CLIENT_KEY_FILE")
		envSecret := getenv("QTB_ADMIN_CLIENT_SECRET") != "" || getenv("QTB_ADMIN_CLIENT_SECRET_FILE") != ""
		if keyFile != "" && envSecret {
			return qlik.Credentials{}, errors.New("QTB_ADMIN_CLIENT_SECRET(_FILE) and QTB_ADMIN_CLIENT_KEY_FILE are both set: set one, not both")
		}
	}
	if keyFile == "" {
		if o.keyID != "" || o.keyAlg != "" {
			return qlik.Credentials{}, errors.New("--admin-client-key-id and --admin-client-key-alg need --admin-client-key-file")
		}
		sec, err := pickSecret(o.secretFile, "--admin-client-secret-file", "QTB_ADMIN_CLIENT_SECRET", getenv)
		if err != nil {
			return qlik.Credentials{}, err
		}
		return qlik.Credentials{ClientID: id, ClientSecret: string(sec)}, nil
	}
	kid := cmp.Or(o.keyID, getenv("QTB_ADMIN_CLIENT_KEY_ID"))
	alg := cmp.Or(o.keyAlg, getenv("QTB_ADMIN_CLIENT_KEY_ALG"))
	key, err := config.ReadSigningKeyFile(keyFile, kid, alg)
	if err != nil {
		return qlik.Credentials{}, fmt.Errorf("admin client key: %w", err)
	}
	return qlik.Credentials{ClientID: id, Key: key}, nil
}

// pickSecret reads a secret from the file named by flagPath, else from
// env_FILE, else from env; both env forms at once are an error.
func pickSecret(flagPath, flagName, env string, getenv func(string) string) (secret, error) {
	if flagPath != "" {
		v, err := config.ReadSecretFile(flagPath)
		if err != nil {
			return "", fmt.Errorf("%s: %w", flagName, err)
		}
		return v, nil
	}
	inline, path := getenv(env), getenv(env+"_FILE")
	switch {
	case inline != "" && path != "":
		return "", fmt.Errorf("%s and %s_FILE: set one, not both", env, env)
	case path != "":
		v, err := config.ReadSecretFile(path)
		if err != nil {
			return "", fmt.Errorf("%s_FILE: %w", env, err)
		}
		return v, nil
	case inline != "":
		return secret(inline), nil
	}
	return "", fmt.Errorf("%s (or %s, %s_FILE) is required", flagName, env, env)
}

// close revokes a token this run minted, so a finished command leaves no
// admin token alive at the tenant. Best effort, on a context of its own: the
// command's may be done.
func (a *adminAPI) close(ctx context.Context) {
	if a.minted == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = a.qlik.Revoke(ctx, *a.minted, string(a.bearer))
}

// ensureConsent gives c the consent method want, reading it when the
// client does not say and setting it when it differs.
func ensureConsent(ctx context.Context, api *adminAPI, c *qlik.OAuthClient, want string) error {
	if c.ConsentMethod == "" {
		m, err := api.admin.GetConsent(ctx, c.ClientID)
		if err != nil {
			return err
		}
		c.ConsentMethod = m
	}
	if c.ConsentMethod == want {
		return nil
	}
	if err := api.admin.SetConsent(ctx, c.ClientID, want); err != nil {
		return err
	}
	c.ConsentMethod = want
	return nil
}

// stringList is a repeatable flag that also splits comma lists.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error {
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" && !slices.Contains(*l, p) {
			*l = append(*l, p)
		}
	}
	return nil
}

// parseInterspersed parses flags wherever they appear among the positional
// arguments (`get <id> --output json`), which flag.Parse alone does not.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// Clients is `qlik-token-broker clients ...`: args are what follows
// "clients". The tenant and the admin credentials come from flags, else
// from getenv.
func Clients(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, clientsUsage)
		return errors.New("clients: a command is required")
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, clientsUsage+adminFlagsUsage)
		return nil
	}
	name, args := args[0], args[1:]
	if (name == "secrets" || name == "consent") && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = name+" "+args[0], args[1:]
	}
	cmd, ok := clientCommands[name]
	if !ok {
		fmt.Fprint(stderr, clientsUsage)
		return fmt.Errorf("clients: unknown command %q", name)
	}

	fs := flag.NewFlagSet("clients "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var admin adminOptions
	admin.register(fs)
	var output string
	fs.StringVar(&output, "output", "table", "table or json")
	var f clientFlags
	if cmd.flags != nil {
		cmd.flags(fs, &f)
	}
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, "Usage: qlik-token-broker clients %s %s [flags]\n\nFlags:\n", name, cmd.args)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fmt.Fprint(stdout, adminFlagsUsage)
		return nil
	}
	if err != nil {
		return fmt.Errorf("clients %s: %w", name, err)
	}
	if output != "table" && output != "json" {
		return fmt.Errorf("clients %s: --output must be table or json, got %q", name, output)
	}
	if len(pos) != cmd.nargs {
		return fmt.Errorf("clients %s: want arguments %s, got %d", name, cmd.args, len(pos))
	}
	if err := f.validate(name); err != nil {
		return fmt.Errorf("clients %s: %w", name, err)
	}

	api, err := admin.connect(ctx, getenv)
	if err != nil {
		return fmt.Errorf("clients %s: %w", name, err)
	}
	defer api.close(ctx)
	out := &clientsOutput{w: stdout, stderr: stderr, json: output == "json"}
	if err := cmd.run(ctx, api, pos, f, out); err != nil {
		return fmt.Errorf("clients %s: %w", name, explain(err))
	}
	return nil
}

// clientFlags are the flags of the clients commands that take any beyond
// the shared ones.
type clientFlags struct {
	// create
	name, appType, description, consent   string
	scopes, grants, origins, redirectURIs stringList
	// update
	op, path, value, patch string
	valueSet               bool
}

func (f clientFlags) validate(cmd string) error {
	switch cmd {
	case "create":
		if strings.TrimSpace(f.name) == "" {
			return errors.New("--name is required")
		}
		if f.consent != "" && f.consent != qlik.ConsentTrusted && f.consent != qlik.ConsentRequired {
			return fmt.Errorf("--consent must be trusted or required, got %q", f.consent)
		}
		for _, o := range f.origins {
			if err := config.CheckOrigin(o); err != nil {
				return fmt.Errorf("--origin: %w", err)
			}
		}
	case "update":
		switch {
		case f.patch != "" && (f.op != "" || f.path != "" || f.valueSet):
			return errors.New("--patch replaces --op, --path and --value: give one form")
		case f.patch != "":
			return nil
		case f.op != "add" && f.op != "remove" && f.op != "replace":
			return fmt.Errorf("--op must be add, remove or replace, got %q (or give --patch)", f.op)
		case !strings.HasPrefix(f.path, "/"):
			return fmt.Errorf("--path must be a JSON Pointer such as /clientName, got %q", f.path)
		case f.op == "remove" && f.valueSet:
			return errors.New("--op remove takes no --value")
		case f.op != "remove" && !f.valueSet:
			return fmt.Errorf("--op %s needs --value", f.op)
		}
	}
	return nil
}

// listPaths are the client members that hold arrays of strings.
var listPaths = []string{"/redirectUris", "/allowedScopes", "/allowedGrantTypes", "/allowedOrigins", "/allowedAuthMethods"}

// patchOps builds the JSON Patch of `clients update`. On an array member a
// value starting with [ is a JSON array; otherwise replace splits a comma
// list and add sends the one string (the tenant appends it). /publicKeys
// takes raw JSON; every other member a string.
func (f clientFlags) patchOps() ([]qlik.PatchOp, error) {
	if f.patch != "" {
		var ops []qlik.PatchOp
		if err := json.Unmarshal([]byte(f.patch), &ops); err != nil {
			return nil, fmt.Errorf("--patch is not a JSON array of operations: %w", err)
		}
		if len(ops) == 0 {
			return nil, errors.New("--patch holds no operations")
		}
		return ops, nil
	}
	op := qlik.PatchOp{Op: f.op, Path: f.path}
	switch {
	case f.op == "remove":
	case f.path == "/publicKeys":
		if !json.Valid([]byte(f.value)) {
			return nil, errors.New("--value for /publicKeys must be JSON")
		}
		op.Value = json.RawMessage(f.value)
	case slices.Contains(listPaths, f.path) && strings.HasPrefix(strings.TrimSpace(f.value), "["):
		var list []string
		if err := json.Unmarshal([]byte(f.value), &list); err != nil {
			return nil, fmt.Errorf("--value for %s is not a JSON array of strings: %w", f.path, err)
		}
		op.Value = nonNilList(list)
	case slices.Contains(listPaths, f.path) && f.op == "replace":
		var list stringList
		_ = list.Set(f.value)
		op.Value = nonNilList(list)
	default:
		op.Value = f.value
	}
	return []qlik.PatchOp{op}, nil
}

// clientCommand is one `clients` command.
type clientCommand struct {
	args  string // for messages: "<id>"
	nargs int
	flags func(*flag.FlagSet, *clientFlags)
	run   func(ctx context.Context, api *adminAPI, args []string, f clientFlags, out *clientsOutput) error
}

var clientCommands = map[string]clientCommand{
	"list": {run: func(ctx context.Context, api *adminAPI, _ []string, _ clientFlags, out *clientsOutput) error {
		cs, err := api.admin.ListOAuthClients(ctx, qlik.ListOptions{})
		if err != nil {
			return err
		}
		return out.list(cs)
	}},
	"get": {args: "<id>", nargs: 1, run: func(ctx context.Context, api *adminAPI, args []string, _ clientFlags, out *clientsOutput) error {
		c, err := api.admin.GetOAuthClient(ctx, args[0])
		if err != nil {
			return err
		}
		if c.ConsentMethod == "" { // not every tenant includes connectionConfig
			if c.ConsentMethod, err = api.admin.GetConsent(ctx, c.ClientID); err != nil {
				return err
			}
		}
		return out.client(c, "")
	}},
	"create": {
		flags: func(fs *flag.FlagSet, f *clientFlags) {
			fs.StringVar(&f.name, "name", "", "client name (required)")
			fs.StringVar(&f.appType, "app-type", qlik.AppTypeWeb, "web, native, spa or anonymous-embed (cannot change later)")
			fs.StringVar(&f.description, "description", "", "description")
			fs.Var(&f.scopes, "scope", "allowed scope; repeatable or comma separated, e.g. user_default")
			fs.Var(&f.grants, "grant", "allowed grant type (web clients): client_credentials, "+qlik.GrantImpersonation)
			fs.Var(&f.origins, "origin", "allowed browser origin, scheme://host[:port]")
			fs.Var(&f.redirectURIs, "redirect-uri", "allowed redirect URI")
			fs.StringVar(&f.consent, "consent", "", "trusted or required (the tenant's default); impersonation needs trusted")
		},
		run: func(ctx context.Context, api *adminAPI, _ []string, f clientFlags, out *clientsOutput) error {
			create := qlik.OAuthClientCreate{
				AppType: f.appType, ClientName: f.name, Description: f.description,
				AllowedScopes: f.scopes, AllowedGrantTypes: f.grants, AllowedOrigins: f.origins, RedirectURIs: f.redirectURIs,
			}
			if f.consent == qlik.ConsentTrusted { // required is the default, and the only other value
				create.ConsentMethod = qlik.ConsentTrusted
			}
			c, err := api.admin.CreateOAuthClient(ctx, create)
			if err != nil {
				return err
			}
			// A tenant may ignore connectionConfig on create: check, and set
			// it when it did. The client exists from here on, so its secret is
			// printed whatever happens next.
			if f.consent != "" {
				err = ensureConsent(ctx, api, &c, f.consent)
			}
			out.note("created client %s", c.ClientID)
			if printErr := out.client(c, c.ClientSecret); printErr != nil {
				return printErr
			}
			if err != nil {
				return fmt.Errorf("client %s was created, but setting its consent failed: %w", c.ClientID, explain(err))
			}
			return nil
		},
	},
	"update": {
		args: "<id>", nargs: 1,
		flags: func(fs *flag.FlagSet, f *clientFlags) {
			fs.StringVar(&f.op, "op", "", "add, remove or replace")
			fs.StringVar(&f.path, "path", "", "member to change, e.g. /clientName, /allowedOrigins")
			fs.Func("value", "new value: a string, a comma list or JSON array for array members", func(s string) error {
				f.value, f.valueSet = s, true
				return nil
			})
			fs.StringVar(&f.patch, "patch", "", "a whole JSON Patch array instead of --op/--path/--value")
		},
		run: func(ctx context.Context, api *adminAPI, args []string, f clientFlags, out *clientsOutput) error {
			ops, err := f.patchOps()
			if err != nil {
				return err
			}
			newSecret, err := api.admin.UpdateOAuthClient(ctx, args[0], ops)
			if err != nil {
				return err
			}
			c, err := api.admin.GetOAuthClient(ctx, args[0])
			if err != nil {
				return fmt.Errorf("updated, but reading the client back failed: %w", explain(err))
			}
			out.note("updated client %s", c.ClientID)
			return out.client(c, newSecret)
		},
	},
	"delete": {args: "<id>", nargs: 1, run: func(ctx context.Context, api *adminAPI, args []string, _ clientFlags, out *clientsOutput) error {
		if err := api.admin.DeleteOAuthClient(ctx, args[0]); err != nil {
			return err
		}
		return out.done(map[string]any{"clientId": args[0], "deleted": true}, "deleted client %s", args[0])
	}},
	"secrets create": {args: "<id>", nargs: 1, run: func(ctx context.Context, api *adminAPI, args []string, _ clientFlags, out *clientsOutput) error {
		s, err := api.admin.CreateClientSecret(ctx, args[0])
		if err != nil {
			return err
		}
		return out.secret(s)
	}},
	"secrets delete": {args: "<id> <hint>", nargs: 2, run: func(ctx context.Context, api *adminAPI, args []string, _ clientFlags, out *clientsOutput) error {
		if err := api.admin.DeleteClientSecret(ctx, args[0], args[1]); err != nil {
			return err
		}
		return out.done(map[string]any{"clientId": args[0], "hint": args[1], "deleted": true},
			"deleted secret %s of client %s", args[1], args[0])
	}},
	"consent get": {args: "<id>", nargs: 1, run: func(ctx context.Context, api *adminAPI, args []string, _ clientFlags, out *clientsOutput) error {
		m, err := api.admin.GetConsent(ctx, args[0])
		if err != nil {
			return err
		}
		return out.done(map[string]string{"clientId": args[0], "consentMethod": m}, "%s", m)
	}},
	"consent set": {args: "<id> trusted|required", nargs: 2, run: func(ctx context.Context, api *adminAPI, args []string, _ clientFlags, out *clientsOutput) error {
		if m := args[1]; m != qlik.ConsentTrusted && m != qlik.ConsentRequired {
			return fmt.Errorf("consent method must be trusted or required, got %q", m)
		}
		if err := api.admin.SetConsent(ctx, args[0], args[1]); err != nil {
			return err
		}
		return out.done(map[string]string{"clientId": args[0], "consentMethod": args[1]},
			"consent of client %s is now %s", args[0], args[1])
	}},
}
