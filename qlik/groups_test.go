package qlik_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// customIDs returns the ids of gs's custom groups.
func customIDs(gs []qlik.Group) []string {
	var ids []string
	for _, g := range gs {
		if g.ProviderType == qlik.ProviderCustom {
			ids = append(ids, g.ID)
		}
	}
	return ids
}

func TestGroupSyncRoundTrip(t *testing.T) {
	f := newAdminFixture(t)
	idp, _ := f.tn.SeedIdPGroup(f.user.ID, "acme-sales") // same name as a custom group below: no conflict

	sales, err := f.api.CreateCustomGroup(t.Context(), "acme-sales")
	if err != nil {
		t.Fatal(err)
	}
	if sales.ID == "" || sales.Name != "acme-sales" || sales.ProviderType != qlik.ProviderCustom || sales.Status != "active" {
		t.Fatalf("created %+v", sales)
	}
	_, err = f.api.CreateCustomGroup(t.Context(), "acme-sales")
	if !errors.Is(err, qlik.ErrGroupExists) {
		t.Fatalf("second create: %v, want ErrGroupExists", err)
	}
	wantQlikError(t, err, "groups", 409)

	// The filter compares case-insensitively; FindCustomGroup does not.
	upper, err := f.api.CreateCustomGroup(t.Context(), "ACME-SALES")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]qlik.Group{"acme-sales": sales, "ACME-SALES": upper} {
		got, err := f.api.FindCustomGroup(t.Context(), name)
		if err != nil || got.ID != want.ID || got.Name != name || got.ProviderType != qlik.ProviderCustom {
			t.Errorf("FindCustomGroup(%q) = %+v, %v; want %+v", name, got, err, want)
		}
	}
	if _, err := f.api.FindCustomGroup(t.Context(), "Acme-Sales"); !errors.Is(err, qlik.ErrGroupNotFound) {
		t.Errorf("FindCustomGroup(other case) = %v, want ErrGroupNotFound", err)
	}

	if err := f.api.PatchUserGroups(t.Context(), f.user.ID, []string{sales.ID, upper.ID}, nil); err != nil {
		t.Fatal(err)
	}
	groups, err := f.api.UserGroups(t.Context(), f.user.ID)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, g := range groups {
		kinds = append(kinds, g.ProviderType+":"+g.Name)
	}
	if want := []string{"idp:acme-sales", "custom:acme-sales", "custom:ACME-SALES"}; !slices.Equal(kinds, want) {
		t.Fatalf("UserGroups = %v, want %v", kinds, want)
	}
	if err := f.api.PatchUserGroups(t.Context(), f.user.ID, nil, []string{sales.ID}); err != nil {
		t.Fatal(err)
	}
	groups, _ = f.api.UserGroups(t.Context(), f.user.ID)
	if got := customIDs(groups); !slices.Equal(got, []string{upper.ID}) {
		t.Fatalf("after remove: %v", got)
	}

	// 400s apply nothing: an add of a group the user has, an IdP group.
	for _, tc := range []struct {
		name        string
		add, remove []string
	}{
		{"already present", []string{sales.ID, upper.ID}, nil},
		{"idp group", []string{sales.ID}, []string{idp.ID}},
		{"unknown group", []string{sales.ID, "ffffffffffffffffffffffff"}, nil},
	} {
		err := f.api.PatchUserGroups(t.Context(), f.user.ID, tc.add, tc.remove)
		wantQlikError(t, err, "users", 400)
		groups, _ = f.api.UserGroups(t.Context(), f.user.ID)
		if got := customIDs(groups); !slices.Equal(got, []string{upper.ID}) {
			t.Fatalf("%s: groups changed to %v", tc.name, got)
		}
	}

	// Unknown user.
	err = f.api.PatchUserGroups(t.Context(), "000000000000000000000bad", []string{sales.ID}, nil)
	wantQlikError(t, err, "users", 404)
	if !errors.Is(err, qlik.ErrUserNotFound) {
		t.Errorf("patch of unknown user: %v, want ErrUserNotFound", err)
	}
	if _, err := f.api.UserGroups(t.Context(), "000000000000000000000bad"); !errors.Is(err, qlik.ErrUserNotFound) {
		t.Errorf("UserGroups of unknown user: %v, want ErrUserNotFound", err)
	}
}

func TestPatchUserGroupsPartial(t *testing.T) {
	f := newAdminFixture(t)
	a, b, c := f.tn.SeedCustomGroup("a"), f.tn.SeedCustomGroup("b"), f.tn.SeedCustomGroup("c")
	f.tn.AssignGroup(f.user.ID, c.ID)
	f.tn.FailUserPatches(1, "b")
	f.tn.ResetCounters()
	err := f.api.PatchUserGroups(t.Context(), f.user.ID, []string{a.ID, b.ID}, []string{c.ID})
	var pe *qlik.PartialPatchError
	if !errors.As(err, &pe) || pe.Unknown || !slices.Equal(pe.Failed, []string{b.ID}) || pe.TraceID == "" {
		t.Fatalf("err = %#v, want a PartialPatchError naming b", err)
	}
	if strings.Contains(err.Error(), b.ID) {
		t.Errorf("error %q names a group", err)
	}
	groups, _ := f.api.UserGroups(t.Context(), f.user.ID)
	if got := customIDs(groups); !slices.Equal(got, []string{a.ID}) {
		t.Fatalf("after the 207: %v, want a alone (b failed, c removed)", got)
	}
	// Used up: the retry succeeds.
	if err := f.api.PatchUserGroups(t.Context(), f.user.ID, []string{b.ID}, nil); err != nil {
		t.Fatal(err)
	}
	// Nothing to do costs nothing.
	if err := f.api.PatchUserGroups(t.Context(), f.user.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := f.tn.CallCounts(); len(got) != 2 || got[qliktest.CallUserPatch] != 2 || got[qliktest.CallUserGet] != 1 {
		t.Errorf("calls = %v, want 2 patches and 1 user read", got)
	}
}

// TestPatchUserGroupsParsesPartialDefensively: 207 bodies the reference
// does not pin down.
func TestPatchUserGroupsParsesPartialDefensively(t *testing.T) {
	ids := []string{"aaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccc"}
	for _, tc := range []struct {
		name    string
		body    string
		failed  []string
		unknown bool
	}{
		{"pointer to the value", `{"errors":[{"code":"X","title":"t","status":400,"source":{"pointer":"/2/value"}}],"traceId":"1"}`, ids[2:], false},
		{"pointer to the op", `{"errors":[{"code":"X","title":"t","source":{"pointer":"/1"}}]}`, ids[1:2], false},
		{"id in meta", `{"errors":[{"code":"X","title":"t","meta":{"value":"aaaaaaaaaaaaaaaaaaaaaaaa"}}]}`, ids[:1], false},
		{"id in detail", `{"errors":[{"code":"X","title":"t","detail":"group bbbbbbbbbbbbbbbbbbbbbbbb: nope"}]}`, ids[1:2], false},
		{"two ids in detail", `{"errors":[{"code":"X","title":"t","detail":"aaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbb"}]}`, nil, true},
		{"pointer out of range", `{"errors":[{"code":"X","title":"t","source":{"pointer":"/9/value"}}]}`, nil, true},
		{"one known, one not", `{"errors":[{"source":{"pointer":"/0"}},{"title":"?"}]}`, ids[:1], true},
		{"no errors", `{"errors":[]}`, nil, true},
		{"empty body", ``, nil, true},
		{"not JSON", `<html>`, nil, true},
		{"status as string", `{"errors":[{"code":"X","title":"t","status":"500","source":{"pointer":"/0/value"}}],"traceId":"abc"}`, ids[:1], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusMultiStatus)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			c, err := qlik.New(srv.URL, qlik.Options{})
			if err != nil {
				t.Fatal(err)
			}
			err = adminWith(c, "tok").PatchUserGroups(t.Context(), "u1", ids[:2], ids[2:])
			var pe *qlik.PartialPatchError
			if !errors.As(err, &pe) || pe.Unknown != tc.unknown || !slices.Equal(pe.Failed, tc.failed) {
				t.Fatalf("err = %#v, want Failed %v Unknown %v", err, tc.failed, tc.unknown)
			}
		})
	}
}
