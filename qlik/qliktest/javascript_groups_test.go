package qliktest_test

import (
	"encoding/json"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestQlikAPIJavaScriptGroups runs node/groups.mjs, which drives the fake's
// groups API and membership patches with Qlik's own JavaScript client
// (@qlik/api): custom group creates and a 409, a filtered list followed
// page by page, a get and a 404, membership adds and removes, the 400s and
// a 207 (which @qlik/api takes as a success carrying the errors body). It
// proves the fake accepts @qlik/api's dialect for groups, not just the one
// package qlik speaks.
func TestQlikAPIJavaScriptGroups(t *testing.T) {
	js := newNodeScripts(t)
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	admin := tn.AddAdminClient()
	user := tn.AddUser(qliktest.User{Subject: "auth0|grace", Email: "grace@example.com"})
	idp, _ := tn.SeedIdPGroup(user.ID, "js-idp")
	tn.FailUserPatches(1, "js-partial")

	out := js.run(t, "groups.mjs",
		"QLIK_HOST="+tn.URL(),
		"QLIK_ADMIN_CLIENT_ID="+admin.ID,
		"QLIK_ADMIN_CLIENT_SECRET="+admin.Secret,
		"QLIK_USER_ID="+user.ID,
		"QLIK_IDP_GROUP_ID="+idp.ID,
		"QLIK_PARTIAL_GROUP=js-partial",
	)
	type outcome struct {
		Status   int
		Codes    []string
		Pointers []string
	}
	var got struct {
		Created []struct {
			Status                 int
			ID, Name, ProviderType string
		}
		Duplicate outcome
		Listed    struct {
			Names []string
			Pages int
		}
		Get        string
		GetMissing outcome
		AddTwo     outcome
		AddPresent outcome
		RemoveIdP  outcome
		Partial    outcome
		Groups     []string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("output: %v\n%s", err, out)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"created", len(got.Created) == 4 && got.Created[0].Status == 201 && got.Created[0].ProviderType == "custom" && got.Created[0].Name == "js-a", true},
		{"duplicate", got.Duplicate, outcome{Status: 409, Codes: []string{"GROUPS-9"}}},
		{"listed", got.Listed.Names, []string{"js-a", "js-b", "js-c", "js-partial"}},
		{"pages", got.Listed.Pages, 2},
		{"get", got.Get, "js-a"},
		{"get missing", got.GetMissing, outcome{Status: 404, Codes: []string{"GROUPS-7"}}},
		{"add two", got.AddTwo, outcome{Status: 204, Codes: []string{}, Pointers: []string{}}},
		{"add present", got.AddPresent, outcome{Status: 400, Codes: []string{"USERS-12"}}},
		{"remove IdP", got.RemoveIdP, outcome{Status: 400, Codes: []string{"USERS-11"}}},
		{"207", got.Partial, outcome{Status: 207, Codes: []string{"USERS-13"}, Pointers: []string{"/1/value"}}},
		{"groups after", got.Groups, []string{"idp:js-idp", "custom:js-b", "custom:js-c"}},
	}
	for _, c := range checks {
		gj, _ := json.Marshal(c.got)
		wj, _ := json.Marshal(c.want)
		if string(gj) != string(wj) {
			t.Errorf("%s: got %s, want %s", c.what, gj, wj)
		}
	}
}
