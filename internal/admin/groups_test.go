package admin

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestGroupsCommand: `groups <user>` shows the user's groups as the tenant
// sees them, by id, subject or email, marking the ones the sync manages
// (custom, within the prefix); an unknown user is an error.
func TestGroupsCommand(t *testing.T) {
	a := newAdminTenant(t)
	ada := a.tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Email: "ada@example.com", Status: "active"})
	for _, name := range []string{"acme-sales", "other-team"} {
		a.tn.AssignGroup(ada.ID, a.tn.SeedCustomGroup(name).ID)
	}
	a.tn.SeedIdPGroup(ada.ID, "acme-idp")

	out, _, err := a.run(t, map[string]string{"QTB_GROUPS_PREFIX": "acme-"}, "groups", ada.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"acme-sales  custom  yes", "other-team  custom  no", "acme-idp    idp     no", "3 groups"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	for _, by := range [][]string{{"--by", "subject", "idp|ada"}, {"--by", "email", "ada@example.com"}} {
		out, _, err := a.run(t, nil, append([]string{"groups", "--output", "json", "--prefix", "other-"}, by...)...)
		if err != nil {
			t.Fatalf("%v: %v", by, err)
		}
		var v userGroupsView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%v: %v\n%s", by, err, out)
		}
		managed := 0
		for _, g := range v.Groups {
			if g.Managed {
				managed++
				if g.Name != "other-team" {
					t.Errorf("%v: %s marked managed", by, g.Name)
				}
			}
		}
		if v.UserID != ada.ID || len(v.Groups) != 3 || managed != 1 {
			t.Errorf("%v: %+v", by, v)
		}
	}
	if _, _, err := a.run(t, nil, "groups", "--by", "email", "nobody@example.com"); err == nil {
		t.Error("an unknown user is not an error")
	}
	if _, _, err := a.run(t, nil, "groups"); err == nil {
		t.Error("no user is not an error")
	}
}
