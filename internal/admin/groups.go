package admin

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

const groupsUsage = `Usage: qlik-token-broker groups <user> [--by userId|subject|email] [--prefix P] [--output table|json] [flags]

Show a user's groups as the tenant sees them (GET /api/v1/users/{id}): every
group, its kind (custom, idp, or system) and whether the broker's groups sync
manages it (a custom group whose name starts with --prefix, QTB_GROUPS_PREFIX).
<user> is a Qlik user id, or a subject or an email with --by.
`

// groupView is a group as `groups --output json` prints it.
type groupView struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	ProviderType string `json:"providerType"`
	Managed      bool   `json:"managed"`
}

// userGroupsView is the JSON output of `groups`.
type userGroupsView struct {
	UserID string      `json:"userId"`
	Prefix string      `json:"prefix"`
	Groups []groupView `json:"groups"`
}

// Groups is `qlik-token-broker groups <user>`: args are what follows
// "groups". The tenant and the admin credentials come from flags, else
// from getenv, as for `clients`.
func Groups(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("groups", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var admin adminOptions
	admin.register(fs)
	by := fs.String("by", qlik.FieldUserID, "what <user> is: userId, subject or email")
	prefix := fs.String("prefix", "", "the groups sync's prefix, to mark the groups it manages (QTB_GROUPS_PREFIX)")
	output := fs.String("output", "table", "table or json")
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, groupsUsage+"\nFlags:\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fmt.Fprint(stdout, adminFlagsUsage)
		return nil
	}
	switch {
	case err != nil:
		return fmt.Errorf("groups: %w", err)
	case len(pos) != 1 || strings.TrimSpace(pos[0]) == "":
		fmt.Fprint(stderr, groupsUsage)
		return errors.New("groups: one user is required")
	case *output != "table" && *output != "json":
		return fmt.Errorf("groups: --output must be table or json, got %q", *output)
	case *by != qlik.FieldUserID && *by != qlik.FieldSubject && *by != "email":
		return fmt.Errorf("groups: --by must be userId, subject or email, got %q", *by)
	}
	if *prefix == "" {
		*prefix = getenv("QTB_GROUPS_PREFIX")
	}
	api, err := admin.connect(ctx, getenv)
	if err != nil {
		return fmt.Errorf("groups: %w", err)
	}
	defer api.close(ctx)
	userID, err := findUser(ctx, api.admin, *by, pos[0])
	if err != nil {
		return fmt.Errorf("groups: %w", explain(err))
	}
	gs, err := api.admin.UserGroups(ctx, userID)
	if err != nil {
		return fmt.Errorf("groups: %w", explain(err))
	}
	view := userGroupsView{UserID: userID, Prefix: *prefix, Groups: make([]groupView, len(gs))}
	for i, g := range gs {
		view.Groups[i] = groupView{ID: g.ID, Name: g.Name, ProviderType: g.ProviderType,
			Managed: g.ProviderType == "custom" && strings.HasPrefix(g.Name, *prefix)}
	}
	out := &clientsOutput{w: stdout, stderr: stderr, json: *output == "json"}
	if out.json {
		return out.encode(view)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP ID\tNAME\tKIND\tMANAGED BY THE SYNC")
	for _, g := range view.Groups {
		managed := "no"
		if g.Managed {
			managed = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.ID, terminalSafe(g.Name, 80), orDash(g.ProviderType), managed)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "user %s: %d groups\n", userID, len(gs))
	return err
}

// findUser resolves <user> to a Qlik user id.
func findUser(ctx context.Context, a *qlik.Admin, by, user string) (string, error) {
	var (
		u   qlik.User
		err error
	)
	switch by {
	case qlik.FieldUserID:
		return user, nil
	case qlik.FieldSubject:
		u, err = a.FindUserBySubject(ctx, user)
	default:
		u, err = a.FindUserByEmail(ctx, user)
	}
	if err != nil {
		return "", err
	}
	return u.ID, nil
}
