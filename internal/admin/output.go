package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// clientsOutput prints results as tables for people or JSON for scripts.
type clientsOutput struct {
	w, stderr io.Writer
	json      bool
}

// clientView is a client as `clients --output json` prints it.
// ClientSecret is set only right after the tenant made one.
type clientView struct {
	ClientID           string     `json:"clientId"`
	ClientName         string     `json:"clientName"`
	Description        string     `json:"description,omitempty"`
	AppType            string     `json:"appType"`
	AllowedScopes      []string   `json:"allowedScopes"`
	AllowedGrantTypes  []string   `json:"allowedGrantTypes"`
	AllowedOrigins     []string   `json:"allowedOrigins"`
	RedirectURIs       []string   `json:"redirectUris"`
	AllowedAuthMethods []string   `json:"allowedAuthMethods,omitempty"`
	ClientURI          string     `json:"clientUri,omitempty"`
	LogoURI            string     `json:"logoUri,omitempty"`
	OwnerID            string     `json:"ownerId,omitempty"`
	CreatedAt          *time.Time `json:"createdAt,omitempty"`
	ClientSecretHint   string     `json:"clientSecretHint,omitempty"`
	ConsentMethod      string     `json:"consentMethod,omitempty"`
	ClientSecret       string     `json:"clientSecret,omitempty"`
	PublicKeys         []keyView  `json:"publicKeys,omitempty"`
}

// keyView is a registered public key as the commands show it: which key,
// for which algorithm.
type keyView struct {
	KeyID     string `json:"kid"`
	Algorithm string `json:"alg"`
	KeyType   string `json:"kty"`
}

func keyViews(keys []qlik.JWK) []keyView {
	var out []keyView
	for _, k := range keys {
		out = append(out, keyView{KeyID: k.KeyID, Algorithm: k.Algorithm, KeyType: k.KeyType})
	}
	return out
}

// keysLine lists registered keys as "kid (alg), ...".
func keysLine(keys []qlik.JWK) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = terminalSafe(k.KeyID, 100) + " (" + terminalSafe(k.Algorithm, 10) + ")"
	}
	return strings.Join(parts, ", ")
}

func viewOf(c qlik.OAuthClient, newSecret string) clientView {
	v := clientView{
		ClientID: c.ClientID, ClientName: c.ClientName, Description: c.Description, AppType: c.AppType,
		AllowedScopes: nonNilList(c.AllowedScopes), AllowedGrantTypes: nonNilList(c.AllowedGrantTypes),
		AllowedOrigins: nonNilList(c.AllowedOrigins), RedirectURIs: nonNilList(c.RedirectURIs),
		AllowedAuthMethods: c.AllowedAuthMethods, ClientURI: c.ClientURI, LogoURI: c.LogoURI, OwnerID: c.OwnerID,
		ClientSecretHint: c.ClientSecretHint, ConsentMethod: c.ConsentMethod, ClientSecret: newSecret,
		PublicKeys: keyViews(c.PublicKeys),
	}
	if !c.CreatedAt.IsZero() {
		t := c.CreatedAt.UTC()
		v.CreatedAt = &t
	}
	return v
}

func nonNilList(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (o *clientsOutput) encode(v any) error {
	enc := json.NewEncoder(o.w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// note prints a line for people; JSON output stays a single document.
func (o *clientsOutput) note(format string, a ...any) {
	if !o.json {
		fmt.Fprintf(o.w, format+"\n", a...)
	}
}

// done prints the result of a command that returns no client.
func (o *clientsOutput) done(v any, format string, a ...any) error {
	if o.json {
		return o.encode(v)
	}
	_, err := fmt.Fprintf(o.w, format+"\n", a...)
	return err
}

func (o *clientsOutput) list(cs []qlik.OAuthClient) error {
	if o.json {
		views := make([]clientView, len(cs))
		for i, c := range cs {
			views[i] = viewOf(c, "")
		}
		return o.encode(views)
	}
	tw := tabwriter.NewWriter(o.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT ID\tNAME\tAPP TYPE\tCONSENT\tSCOPES\tCREATED")
	for _, c := range cs {
		created := "-"
		if !c.CreatedAt.IsZero() {
			created = c.CreatedAt.UTC().Format(time.DateOnly)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.ClientID, terminalSafe(c.ClientName, 60), c.AppType,
			orDash(c.ConsentMethod), orDash(strings.Join(c.AllowedScopes, ",")), created)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(o.w, "%d clients\n", len(cs))
	return err
}

// client prints one client; newSecret, when the tenant just made one, is
// printed with a warning, since Qlik never shows it again.
func (o *clientsOutput) client(c qlik.OAuthClient, newSecret string) error {
	if o.json {
		if newSecret != "" {
			fmt.Fprintln(o.stderr, secretWarning)
		}
		return o.encode(viewOf(c, newSecret))
	}
	tw := tabwriter.NewWriter(o.w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, orDash(v)) }
	row("Client ID", c.ClientID)
	row("Name", terminalSafe(c.ClientName, 256))
	row("Description", terminalSafe(c.Description, 512))
	row("App type", c.AppType)
	row("Consent", c.ConsentMethod)
	row("Scopes", strings.Join(c.AllowedScopes, ", "))
	row("Grant types", strings.Join(c.AllowedGrantTypes, ", "))
	row("Origins", strings.Join(c.AllowedOrigins, ", "))
	row("Redirect URIs", strings.Join(c.RedirectURIs, ", "))
	row("Auth methods", strings.Join(c.AllowedAuthMethods, ", "))
	row("Secret hint", c.ClientSecretHint)
	row("Public keys", keysLine(c.PublicKeys))
	row("Owner", c.OwnerID)
	if !c.CreatedAt.IsZero() {
		row("Created", c.CreatedAt.UTC().Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if newSecret != "" {
		fmt.Fprintf(o.w, "\nClient secret: %s\n%s\n", newSecret, secretWarning)
	}
	return nil
}

func (o *clientsOutput) secret(s qlik.ClientSecret) error {
	if o.json {
		fmt.Fprintln(o.stderr, secretWarning)
		v := struct {
			ClientID     string     `json:"clientId"`
			ClientSecret string     `json:"clientSecret"`
			Hint         string     `json:"hint"`
			CreatedAt    *time.Time `json:"createdAt,omitempty"`
		}{ClientID: s.ClientID, ClientSecret: s.ClientSecret, Hint: s.Hint}
		if !s.CreatedAt.IsZero() {
			t := s.CreatedAt.UTC()
			v.CreatedAt = &t
		}
		return o.encode(v)
	}
	_, err := fmt.Fprintf(o.w, "New secret of client %s (hint %s)\n\nClient secret: %s\n%s\n", s.ClientID, s.Hint, s.ClientSecret, secretWarning)
	return err
}

const secretWarning = "WARNING: Qlik shows a client secret only this once. Store it now (e.g. in a Kubernetes Secret); it cannot be read back later."

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
