package qlik_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

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

	// Unknown user: a patch's 404 may also mean an unknown group, so it
	// stays a plain *Error; a read's 404 is the user.
	err = f.api.PatchUserGroups(t.Context(), "000000000000000000000bad", []string{sales.ID}, nil)
	wantQlikError(t, err, "users", 404)
	if errors.Is(err, qlik.ErrUserNotFound) {
		t.Errorf("patch of unknown user: %v is ErrUserNotFound", err)
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

// TestFindCustomGroupPages: the filter matches every case variant of a
// name (128 of "abcdefg"), two pages of them; the one spelt exactly is
// found wherever it is, and a quote or backslash in a name stays literal.
func TestFindCustomGroupPages(t *testing.T) {
	f := newAdminFixture(t)
	const base = "abcdefg"
	var want qliktest.Group
	for mask := range 1 << len(base) {
		b := []byte(base)
		for i := range b {
			if mask&(1<<i) != 0 {
				b[i] -= 'a' - 'A'
			}
		}
		g := f.tn.SeedCustomGroup(string(b))
		if string(b) == "AbCdEfG" {
			want = g
		}
	}
	f.tn.SeedIdPGroup(f.user.ID, "AbCdEfG")
	odd := f.tn.SeedCustomGroup(`a "quoted" \ name`)
	f.tn.ResetCounters()
	got, err := f.api.FindCustomGroup(t.Context(), "AbCdEfG")
	if err != nil || got.ID != want.ID || got.Name != want.Name || got.ProviderType != qlik.ProviderCustom {
		t.Fatalf("FindCustomGroup = %+v, %v; want %+v", got, err, want)
	}
	if n := f.tn.CallsTo(qliktest.CallGroupList); n != 2 {
		t.Errorf("%d pages fetched, want 2", n)
	}
	got, err = f.api.FindCustomGroup(t.Context(), odd.Name)
	if err != nil || got.ID != odd.ID {
		t.Fatalf("FindCustomGroup(odd) = %+v, %v", got, err)
	}
	if _, err := f.api.FindCustomGroup(t.Context(), `a "quoted" \ nam`); !errors.Is(err, qlik.ErrGroupNotFound) {
		t.Errorf("prefix of odd: %v", err)
	}
}

func TestGroupCallsRefuseBadArguments(t *testing.T) {
	f := newAdminFixture(t)
	ctx := t.Context()
	f.tn.ResetCounters()
	long := strings.Repeat("é", qlik.MaxGroupName)
	for name, call := range map[string]func() error{
		"create empty":      func() error { _, err := f.api.CreateCustomGroup(ctx, ""); return err },
		"create blank":      func() error { _, err := f.api.CreateCustomGroup(ctx, "  "); return err },
		"create too long":   func() error { _, err := f.api.CreateCustomGroup(ctx, long+"x"); return err },
		"create bad UTF-8":  func() error { _, err := f.api.CreateCustomGroup(ctx, "\xff"); return err },
		"find empty":        func() error { _, err := f.api.FindCustomGroup(ctx, ""); return err },
		"groups of no one":  func() error { _, err := f.api.UserGroups(ctx, ""); return err },
		"groups of dot":     func() error { _, err := f.api.UserGroups(ctx, ".."); return err },
		"patch no one":      func() error { return f.api.PatchUserGroups(ctx, "", []string{"g"}, nil) },
		"patch empty id":    func() error { return f.api.PatchUserGroups(ctx, f.user.ID, []string{""}, nil) },
		"patch id twice":    func() error { return f.api.PatchUserGroups(ctx, f.user.ID, []string{"g", "g"}, nil) },
		"add and remove":    func() error { return f.api.PatchUserGroups(ctx, f.user.ID, []string{"g"}, []string{"g"}) },
		"create, no bearer": func() error { _, err := adminWith(f.c, "").CreateCustomGroup(ctx, "g"); return err },
	} {
		if err := call(); !errors.Is(err, qlik.ErrInvalidRequest) {
			t.Errorf("%s: %v, want ErrInvalidRequest", name, err)
		}
	}
	if got := f.tn.CallCounts(); len(got) != 0 {
		t.Errorf("calls made: %v", got)
	}
	if _, err := f.api.CreateCustomGroup(ctx, long); err != nil {
		t.Errorf("a 256-character name: %v", err)
	}
}

func TestGroupCallsMalformedAnswers(t *testing.T) {
	f := newAdminFixture(t)
	ctx := t.Context()
	for _, tt := range []struct {
		name string
		ep   qliktest.Endpoint
		body string
		call func() error
	}{
		{"create not JSON", qliktest.EndpointGroups, `<html>`, func() error { _, err := f.api.CreateCustomGroup(ctx, "g"); return err }},
		{"create without id", qliktest.EndpointGroups, `{"name":"g","providerType":"custom"}`, func() error { _, err := f.api.CreateCustomGroup(ctx, "g"); return err }},
		{"create made an IdP group", qliktest.EndpointGroups, `{"id":"1","name":"g","providerType":"idp"}`, func() error {
			_, err := f.api.CreateCustomGroup(ctx, "g")
			return err
		}},
		{"list entry without id", qliktest.EndpointGroups, `{"data":[{"name":"g","providerType":"custom"}]}`, func() error {
			_, err := f.api.FindCustomGroup(ctx, "g")
			return err
		}},
		{"user without id", qliktest.EndpointUsers, `{"assignedGroups":[]}`, func() error { _, err := f.api.UserGroups(ctx, f.user.ID); return err }},
		{"group without id", qliktest.EndpointUsers, `{"id":"u","assignedGroups":[{"name":"g"}]}`, func() error {
			_, err := f.api.UserGroups(ctx, f.user.ID)
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.tn.InjectFault(tt.ep, qliktest.Fault{Status: 200, Body: tt.body})
			if err := tt.call(); !errors.Is(err, qlik.ErrMalformedResponse) {
				t.Errorf("err = %v, want ErrMalformedResponse", err)
			}
		})
	}
	// A created group whose answer leaves providerType out is the custom group asked for.
	f.tn.InjectFault(qliktest.EndpointGroups, qliktest.Fault{Status: 201, Body: `{"id":"1","name":"g"}`})
	if g, err := f.api.CreateCustomGroup(ctx, "g"); err != nil || g.ProviderType != qlik.ProviderCustom {
		t.Errorf("no providerType: %+v, %v", g, err)
	}
	// A listed group without providerType is taken as the custom group the
	// filter asked for, after one that says it is custom.
	f.tn.InjectFault(qliktest.EndpointGroups, qliktest.Fault{Status: 200, Body: `{"data":[{"id":"1","name":"g"},{"id":"2","name":"G"}]}`})
	if g, err := f.api.FindCustomGroup(ctx, "g"); err != nil || g.ID != "1" || g.ProviderType != qlik.ProviderCustom {
		t.Errorf("untyped: %+v, %v", g, err)
	}
	f.tn.InjectFault(qliktest.EndpointGroups, qliktest.Fault{Status: 200, Body: `{"data":[{"id":"1","name":"g"},{"id":"2","name":"g","providerType":"custom"}]}`})
	if g, err := f.api.FindCustomGroup(ctx, "g"); err != nil || g.ID != "2" {
		t.Errorf("typed after untyped: %+v, %v", g, err)
	}
	f.tn.InjectFault(qliktest.EndpointGroups, qliktest.Fault{Status: 200, Body: `{"data":[{"id":"1","name":"g","providerType":"idp"}]}`})
	if _, err := f.api.FindCustomGroup(ctx, "g"); !errors.Is(err, qlik.ErrGroupNotFound) {
		t.Errorf("an IdP group answered: %v", err)
	}
	// A user in no group.
	if gs, err := f.api.UserGroups(ctx, f.user.ID); err != nil || gs == nil || len(gs) != 0 {
		t.Errorf("UserGroups of a user in no group = %#v, %v", gs, err)
	}
}

// TestGroupWritesRateLimited: group writes share the tenant's Tier-2
// quota; a 429 is the *Error with its Retry-After, as for tokens.
func TestGroupWritesRateLimited(t *testing.T) {
	f := newFixture(t, qlik.Options{}, qliktest.WithTier2Quota(1), qliktest.WithCompression(60)) // 5 in any 5s
	admin := f.tn.AddAdminClient()
	api := f.c.Admin(qlik.ReuseTokenSource(f.c.ClientCredentials(qlik.Credentials{ClientID: admin.ID, ClientSecret: admin.Secret}, "admin_classic"), 0, f.clock.Now))
	g, err := api.CreateCustomGroup(t.Context(), "g") // token + create
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = api.PatchUserGroups(t.Context(), f.user.ID, []string{g.ID}, nil) // 204, then 400s: all count
	}
	for _, call := range []func() error{
		func() error { _, err := api.CreateCustomGroup(t.Context(), "h"); return err },
		func() error { return api.PatchUserGroups(t.Context(), f.user.ID, nil, []string{g.ID}) },
	} {
		err := call()
		var qe *qlik.Error
		if !errors.As(err, &qe) || qe.StatusCode != 429 || qe.RetryAfter != 5*time.Second || !qe.Temporary() || qe.Status != "429" || qe.TraceID == "" {
			t.Fatalf("err = %#v, want a 429 *qlik.Error with Retry-After 5s", err)
		}
	}
	if gs, err := api.UserGroups(t.Context(), f.user.ID); err != nil || len(gs) != 1 {
		t.Fatalf("UserGroups (Tier 1) during the block: %v, %v", gs, err)
	}
}
