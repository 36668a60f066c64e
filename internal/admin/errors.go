package admin

import (
	"errors"
	"strings"
	"unicode"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// tenantError is a refusal from the tenant as an admin command reports it:
// with the detail that *qlik.Error leaves out of its message (the reader is
// the admin who sent the request) and a hint on what to do.
type tenantError struct {
	err  *qlik.Error
	hint string
}

func (e *tenantError) Error() string {
	var b strings.Builder
	b.WriteString(e.err.Error())
	if d := terminalSafe(e.err.Detail, 500); d != "" {
		b.WriteString(": ")
		b.WriteString(d)
	}
	if e.hint != "" && !strings.Contains(strings.ToLower(e.err.Detail), strings.ToLower(e.hint)) {
		b.WriteString(" (")
		b.WriteString(e.hint)
		b.WriteString(")")
	}
	return b.String()
}

func (e *tenantError) Unwrap() error { return e.err }

// explain turns a *qlik.Error into a *tenantError; other errors pass.
func explain(err error) error {
	var qe *qlik.Error
	if !errors.As(err, &qe) {
		return err
	}
	return &tenantError{err: qe, hint: refusalHint(qe)}
}

func refusalHint(e *qlik.Error) string {
	token := e.Endpoint == "token"
	switch {
	case token && (e.StatusCode == 400 || e.StatusCode == 401):
		// Qlik's codes are opaque and a wrong secret can be a 400: the
		// status says only that the request was refused.
		return "the tenant refused the admin client: check its id and secret, that it may use the client_credentials grant, and that it is allowed scope " + adminScope + " (its allowedScopes)"
	case e.StatusCode == 401:
		return "the admin token is invalid, expired or revoked"
	case e.StatusCode == 403:
		return "the admin credentials lack scope " + adminScope
	case e.StatusCode == 404 && e.Endpoint == "oauth-client-secrets":
		return "no such client, or no secret with this hint"
	case e.StatusCode == 404:
		return "no OAuth client with this id"
	case e.StatusCode == 409:
		return "the client already has 5 secrets, Qlik's limit: delete one with `qlik-token-broker clients secrets delete <id> <hint>`"
	case e.StatusCode == 429 && e.RetryAfter > 0:
		return "rate limited: retry in " + e.RetryAfter.String()
	}
	return ""
}

// terminalSafe cuts s to n bytes and drops control characters, so a tenant's
// detail cannot rewrite the terminal.
func terminalSafe(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "..."
	}
	return strings.TrimSpace(s)
}

// indent puts each joined error on its own indented line.
func indent(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}
