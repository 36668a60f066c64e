package qliktest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// groupDoc is a group as the groups API answers it.
type groupDoc struct {
	ID            string            `json:"id"`
	TenantID      string            `json:"tenantId"`
	Name          string            `json:"name"`
	Status        string            `json:"status"`
	ProviderType  string            `json:"providerType"`
	AssignedRoles []json.RawMessage `json:"assignedRoles"`
	CreatedAt     string            `json:"createdAt"`
	LastUpdatedAt string            `json:"lastUpdatedAt"`
	Links         struct {
		Self struct{ Href string }
	} `json:"links"`
}

type groupList struct {
	Data  []groupDoc `json:"data"`
	Links struct {
		Next *struct{ Href string }
		Prev *struct{ Href string }
	} `json:"links"`
}

func (l groupList) names() []string {
	var s []string
	for _, g := range l.Data {
		s = append(s, g.Name)
	}
	return s
}

func groupsQuery(kv ...string) string {
	q := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return "/api/v1/groups?" + q.Encode()
}

func (h *adminHarness) createGroup(body any) response {
	h.t.Helper()
	return h.api(http.MethodPost, "/api/v1/groups", h.bearer, body, nil)
}

func TestCreateGroup(t *testing.T) {
	h := newAdminHarness(t)
	g := decodeAs[groupDoc](t, h.createGroup(map[string]string{"name": "Sales", "providerType": "custom", "status": "active"}), 201)
	if len(g.ID) != 24 || g.TenantID == "" || g.Name != "Sales" || g.Status != "active" || g.ProviderType != "custom" ||
		g.AssignedRoles == nil || g.CreatedAt != "2024-03-17T18:21:41.000Z" || g.LastUpdatedAt != g.CreatedAt ||
		g.Links.Self.Href != h.tn.URL()+"/api/v1/groups/"+g.ID {
		t.Fatalf("created %+v", g)
	}
	// providerType omitted means idp; an IdP group may have a custom group's name.
	idp := decodeAs[groupDoc](t, h.createGroup(map[string]string{"name": "Sales"}), 201)
	if idp.ProviderType != "idp" || idp.ID == g.ID {
		t.Fatalf("no providerType: %+v", idp)
	}
	// Names are case-sensitive: another case is another group.
	decodeAs[groupDoc](t, h.createGroup(map[string]string{"name": "SALES", "providerType": "custom"}), 201)
	wantError(t, h.createGroup(map[string]string{"name": "Sales", "providerType": "custom"}), 409, "GROUPS-9")
	wantError(t, h.createGroup(map[string]string{"name": "Sales", "providerType": "idp"}), 409, "GROUPS-9")
	// A custom group named like an IdP group that came first.
	h.tn.SeedIdPGroup(h.user.ID, "Support")
	decodeAs[groupDoc](t, h.createGroup(map[string]string{"name": "Support", "providerType": "custom"}), 201)

	long := strings.Repeat("é", 256) // 256 characters, 512 bytes
	decodeAs[groupDoc](t, h.createGroup(map[string]string{"name": long, "providerType": "custom"}), 201)
	for name, body := range map[string]any{
		"name over 256":    map[string]string{"name": long + "x", "providerType": "custom"},
		"no name":          map[string]string{"providerType": "custom"},
		"blank name":       map[string]string{"name": " ", "providerType": "custom"},
		"bad providerType": map[string]string{"name": "x", "providerType": "system"},
		"bad status":       map[string]string{"name": "x", "status": "disabled"},
		"unknown field":    map[string]string{"name": "x", "kind": "custom"},
		"name not string":  map[string]any{"name": 7},
		"role without ref": map[string]any{"name": "x", "assignedRoles": []map[string]string{{}}},
		"not JSON":         "{",
	} {
		t.Run(name, func(t *testing.T) { wantError(t, h.createGroup(body), 400, "GROUPS-2") })
	}
	if n := len(h.tn.Groups()); n != 6 {
		t.Errorf("%d groups stored, want 6", n)
	}
	if got := h.tn.CallsTo(qliktest.CallGroupCreate); got != 16 {
		t.Errorf("CallsTo(create) = %d, want 16", got)
	}
}

func TestGroupsNeedAdminClassic(t *testing.T) {
	h := newAdminHarness(t)
	users := h.tn.AddClient(qliktest.OAuthClient{AllowedScopes: []string{"admin.users"}})
	usersOnly := h.ccToken(users, "admin.users")
	g := h.tn.SeedCustomGroup("g")
	for _, rq := range []struct{ method, path string }{
		{http.MethodGet, "/api/v1/groups"}, {http.MethodPost, "/api/v1/groups"}, {http.MethodGet, "/api/v1/groups/" + g.ID},
	} {
		wantError(t, h.api(rq.method, rq.path, "", `{"name":"x"}`, nil), 401, "HTTP-401")
		wantError(t, h.api(rq.method, rq.path, usersOnly, `{"name":"x"}`, nil), 403, "HTTP-403")
	}
	// The users API, membership patches included, takes admin.users.
	patch := []map[string]string{{"op": "add", "path": "/assignedGroups/-", "value": g.ID}}
	if r := h.api(http.MethodPatch, "/api/v1/users/"+h.user.ID, usersOnly, patch, nil); r.status != 204 {
		t.Fatalf("patch with admin.users: %d %s", r.status, r.body)
	}
}

func TestListGroups(t *testing.T) {
	h := newAdminHarness(t)
	for i := range 25 {
		h.tn.SeedCustomGroup(fmt.Sprintf("c%02d", i))
	}
	h.tn.SeedIdPGroup(h.user.ID, "c00")
	h.tn.SeedCustomGroup("Other")

	// Default limit 20; follow next to the end.
	var got []string
	path := groupsQuery("filter", `providerType eq "custom" and name sw "c"`)
	pages := 0
	for path != "" {
		l := decodeAs[groupList](t, h.api(http.MethodGet, path, h.bearer, nil, nil), 200)
		pages++
		got = append(got, l.names()...)
		path = ""
		if l.Links.Next != nil {
			u, _ := url.Parse(l.Links.Next.Href)
			path = u.RequestURI()
		}
	}
	var want []string
	for i := range 25 {
		want = append(want, fmt.Sprintf("c%02d", i))
	}
	if pages != 2 || !slices.Equal(got, want) {
		t.Fatalf("%d pages: %q", pages, got)
	}

	for _, tc := range []struct {
		filter string
		want   []string
	}{
		// Comparisons are case-insensitive, as the reference says.
		{`name eq "OTHER"`, []string{"Other"}},
		{`name eq "c00"`, []string{"c00", "c00"}},
		{`name eq "c00" and providerType eq "idp"`, []string{"c00"}},
		{`(name eq "c01" or name eq "c02") and providerType eq "CUSTOM"`, []string{"c01", "c02"}},
		{`name eq "none"`, nil},
	} {
		l := decodeAs[groupList](t, h.api(http.MethodGet, groupsQuery("filter", tc.filter, "limit", "100"), h.bearer, nil, nil), 200)
		if !slices.Equal(l.names(), tc.want) {
			t.Errorf("filter %s: %q, want %q", tc.filter, l.names(), tc.want)
		}
	}
	l := decodeAs[groupList](t, h.api(http.MethodGet, groupsQuery("sort", "-name", "limit", "2"), h.bearer, nil, nil), 200)
	if !slices.Equal(l.names(), []string{"Other", "c24"}) {
		t.Errorf("sort -name: %q", l.names())
	}
	sys := decodeAs[groupList](t, h.api(http.MethodGet, groupsQuery("systemGroups", "true"), h.bearer, nil, nil), 200)
	if len(sys.Data) != 1 || sys.Data[0].ID != qliktest.EveryoneID || sys.Data[0].Name != qliktest.EveryoneName || sys.Data[0].ProviderType != "" {
		t.Errorf("systemGroups: %+v", sys.Data)
	}
	for _, q := range []string{
		groupsQuery("filter", `name gt "a"`), groupsQuery("filter", `owner eq "a"`), groupsQuery("filter", `name eq`),
	} {
		wantError(t, h.api(http.MethodGet, q, h.bearer, nil, nil), 400, "GROUPS-1")
	}
	for _, q := range []string{
		groupsQuery("limit", "0"), groupsQuery("limit", "101"), groupsQuery("next", "bm9ib2R5"), groupsQuery("sort", "id"),
		groupsQuery("systemGroups", "true", "limit", "5"), groupsQuery("systemGroups", "yes"),
	} {
		wantError(t, h.api(http.MethodGet, q, h.bearer, nil, nil), 400, "GROUPS-2")
	}
}

func TestGetGroup(t *testing.T) {
	h := newAdminHarness(t)
	g := h.tn.SeedCustomGroup("g")
	got := decodeAs[groupDoc](t, h.api(http.MethodGet, "/api/v1/groups/"+g.ID, h.bearer, nil, nil), 200)
	if got.ID != g.ID || got.Name != "g" || got.ProviderType != "custom" {
		t.Fatalf("got %+v", got)
	}
	everyone := decodeAs[groupDoc](t, h.api(http.MethodGet, "/api/v1/groups/"+qliktest.EveryoneID, h.bearer, nil, nil), 200)
	if everyone.Name != qliktest.EveryoneName {
		t.Fatalf("Everyone: %+v", everyone)
	}
	wantError(t, h.api(http.MethodGet, "/api/v1/groups/ffffffffffffffffffffffff", h.bearer, nil, nil), 404, "GROUPS-7")
	wantError(t, h.api(http.MethodDelete, "/api/v1/groups/"+g.ID, h.bearer, nil, nil), 405, "HTTP-405")
	h.tn.InjectFault(qliktest.EndpointGroups, qliktest.Fault{Status: 503})
	wantError(t, h.api(http.MethodGet, "/api/v1/groups/"+g.ID, h.bearer, nil, nil), 503, "HTTP-503")
	if got := h.tn.CallCounts(); got[qliktest.CallGroupGet] != 4 || len(got) != 2 { // + the admin's token
		t.Errorf("calls %v", got)
	}
}

// patchOp is one JSON Patch op.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

func add(id any) patchOp    { return patchOp{"add", "/assignedGroups/-", id} }
func remove(id any) patchOp { return patchOp{"remove-value", "/assignedGroups", id} }

// opErrors is a 400 or 207 body of a membership patch.
type opErrors struct {
	Errors []struct {
		Code   string
		Title  string
		Detail string
		Status json.RawMessage
		Source struct{ Pointer string }
	}
	TraceID string
}

func (h *adminHarness) patchUser(id string, ops ...patchOp) response {
	h.t.Helper()
	return h.api(http.MethodPatch, "/api/v1/users/"+id, h.bearer, ops, nil)
}

// groupNames is what GET /api/v1/users/{id} lists, as "providerType:name".
func (h *adminHarness) groupNames(userID string) []string {
	h.t.Helper()
	u := decodeAs[struct {
		AssignedGroups []struct {
			ID, Name, ProviderType string
			AssignedRoles          []json.RawMessage
		}
	}](h.t, h.api(http.MethodGet, "/api/v1/users/"+userID, h.bearer, nil, nil), 200)
	var out []string
	for _, g := range u.AssignedGroups {
		if g.ID == "" || g.AssignedRoles == nil {
			h.t.Fatalf("assigned group %+v", g)
		}
		out = append(out, g.ProviderType+":"+g.Name)
	}
	return out
}

func TestPatchUserGroups(t *testing.T) {
	h := newAdminHarness(t)
	a, b, c := h.tn.SeedCustomGroup("a"), h.tn.SeedCustomGroup("b"), h.tn.SeedCustomGroup("c")
	idp, _ := h.tn.SeedIdPGroup(h.user.ID, "corp")
	other := h.tn.AddUser(qliktest.User{Subject: "auth0|bob"})

	if got := h.groupNames(h.user.ID); !slices.Equal(got, []string{"idp:corp"}) {
		t.Fatalf("before: %q", got)
	}
	if r := h.patchUser(h.user.ID, add(a.ID), add(map[string]string{"name": "b", "providerType": "custom"})); r.status != 204 || len(r.body) != 0 {
		t.Fatalf("add: %d %s", r.status, r.body)
	}
	if got := h.groupNames(h.user.ID); !slices.Equal(got, []string{"idp:corp", "custom:a", "custom:b"}) {
		t.Fatalf("after add: %q", got)
	}
	if r := h.patchUser(h.user.ID, remove(a.ID), add(map[string]string{"id": c.ID})); r.status != 204 {
		t.Fatalf("remove-value: %d %s", r.status, r.body)
	}
	state := []string{"idp:corp", "custom:b", "custom:c"}
	if got := h.groupNames(h.user.ID); !slices.Equal(got, state) {
		t.Fatalf("after remove: %q", got)
	}

	// Refusals apply nothing, not even the ops before the failing one.
	for _, tc := range []struct {
		name    string
		ops     []patchOp
		status  int
		code    string
		pointer string
	}{
		{"add already present", []patchOp{add(a.ID), add(b.ID)}, 400, "USERS-12", "/1/value"},
		{"add twice", []patchOp{add(a.ID), add(a.ID)}, 400, "USERS-12", "/1/value"},
		{"remove absent", []patchOp{add(a.ID), remove(a.ID), remove(a.ID)}, 400, "USERS-12", "/2/value"},
		{"remove IdP membership", []patchOp{add(a.ID), remove(idp.ID)}, 400, "USERS-11", "/1/value"},
		{"add IdP group", []patchOp{add(a.ID), add(map[string]string{"name": "corp", "providerType": "idp"})}, 400, "USERS-11", "/1/value"},
		{"add Everyone", []patchOp{add(qliktest.EveryoneID)}, 400, "USERS-11", "/0/value"},
		{"replace with IdP groups", []patchOp{{"replace", "/assignedGroups", []map[string]string{{"id": a.ID}}}}, 400, "USERS-11", "/0/value"},
		{"unknown group", []patchOp{add(a.ID), add("ffffffffffffffffffffffff")}, 400, "USERS-10", "/1/value"},
		{"unknown group name", []patchOp{add(map[string]string{"name": "zz", "providerType": "custom"})}, 400, "USERS-10", "/0/value"},
		{"value not a group", []patchOp{add(a.ID), add(7)}, 400, "USERS-2", "/1/value"},
		{"group object with extra field", []patchOp{add(map[string]string{"id": a.ID, "x": "y"})}, 400, "USERS-2", "/0/value"},
		{"unsupported path", []patchOp{add(a.ID), {"replace", "/email", "x@example.com"}}, 400, "USERS-2", "/1/value"},
		{"unsupported op", []patchOp{{"move", "/assignedGroups", a.ID}}, 400, "USERS-2", "/0/value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.patchUser(h.user.ID, tc.ops...)
			wantError(t, r, tc.status, tc.code)
			var eb opErrors
			_ = json.Unmarshal(r.body, &eb)
			if eb.Errors[0].Source.Pointer != tc.pointer {
				t.Errorf("pointer %q, want %q", eb.Errors[0].Source.Pointer, tc.pointer)
			}
			if got := h.groupNames(h.user.ID); !slices.Equal(got, state) {
				t.Fatalf("groups changed to %q", got)
			}
		})
	}
	for name, body := range map[string]string{
		"not an array": `{"op":"add"}`, "null": `null`, "unknown op field": `[{"op":"add","path":"/assignedGroups/-","value":"x","from":"y"}]`,
	} {
		t.Run(name, func(t *testing.T) {
			wantError(t, h.api(http.MethodPatch, "/api/v1/users/"+h.user.ID, h.bearer, body, nil), 400, "USERS-2")
		})
	}
	wantError(t, h.patchUser("ffffffffffffffffffffffff", add(a.ID)), 404, "USERS-4")

	// A user without IdP groups can have its list replaced; name and status too.
	h.tn.AssignGroup(other.ID, a.ID)
	r := h.patchUser(other.ID, patchOp{"replace", "/assignedGroups", []map[string]string{{"id": b.ID}, {"name": "c", "providerType": "custom"}}},
		patchOp{"replace", "/name", "Bob"}, patchOp{"replace", "/status", "disabled"})
	if r.status != 204 {
		t.Fatalf("replace: %d %s", r.status, r.body)
	}
	if got := h.groupNames(other.ID); !slices.Equal(got, []string{"custom:b", "custom:c"}) {
		t.Fatalf("after replace: %q", got)
	}
	if got := h.tn.UserGroups(other.ID); len(got) != 2 || got[0] != b || got[1] != c {
		t.Fatalf("UserGroups = %+v", got)
	}

	log := h.tn.UserPatches()
	if len(log) != 2+13+3+1+1 {
		t.Fatalf("%d patches logged", len(log))
	}
	if first := log[0]; first.UserID != h.user.ID || first.Status != 204 || len(first.Ops) != 2 ||
		first.Ops[0] != (qliktest.PatchOp{Op: "add", Path: "/assignedGroups/-", Value: a.ID}) ||
		first.Ops[1].Value != `{"name":"b","providerType":"custom"}` {
		t.Errorf("first patch logged as %+v", first)
	}
	if got := h.tn.CallsTo(qliktest.CallUserPatch); got != len(log) {
		t.Errorf("CallsTo(patch) = %d, want %d", got, len(log))
	}
}

func TestPatchUserGroupsPartial(t *testing.T) {
	h := newAdminHarness(t)
	a, b, c := h.tn.SeedCustomGroup("a"), h.tn.SeedCustomGroup("b"), h.tn.SeedCustomGroup("c")
	h.tn.AssignGroup(h.user.ID, c.ID)
	h.tn.FailUserPatches(1, b.ID, "c")

	// A refused patch does not use the 207 up, nor does one without such an op.
	wantError(t, h.patchUser(h.user.ID, add(b.ID), add(c.ID)), 400, "USERS-12")
	if r := h.patchUser(h.user.ID, add(a.ID)); r.status != 204 {
		t.Fatalf("unrelated patch: %d %s", r.status, r.body)
	}
	r := h.patchUser(h.user.ID, remove(a.ID), add(b.ID), remove(c.ID))
	if r.status != 207 {
		t.Fatalf("status %d, want 207: %s", r.status, r.body)
	}
	var eb opErrors
	if err := json.Unmarshal(r.body, &eb); err != nil || len(eb.Errors) != 2 || len(eb.TraceID) != 32 {
		t.Fatalf("207 body %s", r.body)
	}
	for i, want := range []string{"/1/value", "/2/value"} {
		e := eb.Errors[i]
		if e.Source.Pointer != want || e.Code != "USERS-13" || string(e.Status) != "500" || e.Title == "" || !strings.Contains(e.Detail, []string{b.ID, c.ID}[i]) {
			t.Errorf("error %d: %+v", i, e)
		}
	}
	// a was removed; b not added, c not removed.
	if got := h.tn.UserGroups(h.user.ID); len(got) != 1 || got[0] != c {
		t.Fatalf("after 207: %+v", got)
	}
	if r := h.patchUser(h.user.ID, add(b.ID), remove(c.ID)); r.status != 204 {
		t.Fatalf("after the 207 was used: %d %s", r.status, r.body)
	}
	// No groups named: any group op fails; two in a row.
	h.tn.FailUserPatches(2)
	for range 2 {
		if r := h.patchUser(h.user.ID, add(a.ID)); r.status != 207 {
			t.Fatalf("status %d, want 207", r.status)
		}
	}
	if r := h.patchUser(h.user.ID, add(a.ID)); r.status != 204 {
		t.Fatalf("status %d, want 204", r.status)
	}
	var statuses []int
	for _, p := range h.tn.UserPatches() {
		statuses = append(statuses, p.Status)
	}
	if want := []int{400, 204, 207, 204, 207, 207, 204}; !slices.Equal(statuses, want) {
		t.Errorf("logged statuses %v, want %v", statuses, want)
	}
}

// TestGroupWritesAreTier2: group creation, membership patches and user
// creation count against the Tier-2 quota with token calls (one count,
// quota.go); a 429 blocks them all, in the users API's dialect; the GETs
// are Tier 1.
func TestGroupWritesAreTier2(t *testing.T) {
	h := newHarness(t, qliktest.WithTier2Quota(1), qliktest.WithCompression(60)) // 5 calls in any 5s
	admin := h.tn.AddAdminClient()
	ah := &adminHarness{harness: h, admin: admin, bearer: h.ccToken(admin, "")} // call 1
	g := decodeAs[groupDoc](t, ah.createGroup(map[string]string{"name": "g", "providerType": "custom"}), 201)
	if r := ah.patchUser(h.user.ID, add(g.ID)); r.status != 204 {
		t.Fatal(r.status)
	}
	if r := ah.patchUser(h.user.ID, remove(g.ID)); r.status != 204 {
		t.Fatal(r.status)
	}
	h.issue() // call 5
	wantError(t, ah.api(http.MethodPost, "/api/v1/users", ah.bearer, map[string]string{"subject": "auth0|new"}, nil), 429, "HTTP-429")
	r := ah.createGroup(map[string]string{"name": "h", "providerType": "custom"})
	wantError(t, r, 429, "HTTP-429")
	if r.header.Get("Retry-After") != "5" {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	wantError(t, ah.patchUser(h.user.ID, add(g.ID)), 429, "HTTP-429")
	if r := ah.api(http.MethodGet, "/api/v1/groups/"+g.ID, ah.bearer, nil, nil); r.status != 200 {
		t.Fatalf("GET during the block: %d", r.status)
	}
	if r := ah.api(http.MethodGet, "/api/v1/users/"+h.user.ID, ah.bearer, nil, nil); r.status != 200 {
		t.Fatalf("GET user during the block: %d", r.status)
	}
	if got := h.tn.UserGroups(h.user.ID); len(got) != 0 {
		t.Fatalf("a refused patch applied: %+v", got)
	}
	h.clock.Advance(5 * time.Second)
	if r := ah.patchUser(h.user.ID, add(g.ID)); r.status != 204 {
		t.Fatalf("after the wait: %d %s", r.status, r.body)
	}
	if u := h.tn.QuotaUse(); u.Admitted != 6 || u.Rejected != 3 {
		t.Errorf("QuotaUse %+v", u)
	}
	if got := h.tn.WriteCalls(); got != 7 {
		t.Errorf("WriteCalls %d, want 7", got)
	}
}

func TestRaceGroupCreate(t *testing.T) {
	h := newAdminHarness(t)
	h.tn.RaceGroupCreate("g")
	decodeAs[groupDoc](t, h.createGroup(map[string]string{"name": "g"}), 201) // an IdP group does not take it
	wantError(t, h.createGroup(map[string]string{"name": "g", "providerType": "custom"}), 409, "GROUPS-9")
	l := decodeAs[groupList](t, h.api(http.MethodGet, groupsQuery("filter", `name eq "g" and providerType eq "custom"`), h.bearer, nil, nil), 200)
	if len(l.Data) != 1 || l.Data[0].ProviderType != "custom" {
		t.Fatalf("after the race: %+v", l.Data)
	}
	wantError(t, h.createGroup(map[string]string{"name": "g", "providerType": "custom"}), 409, "GROUPS-9")
	decodeAs[groupDoc](t, h.createGroup(map[string]string{"name": "h", "providerType": "custom"}), 201) // used up
}

func TestGroupHooks(t *testing.T) {
	h := newHarness(t)
	g := h.tn.SeedCustomGroup("g")
	if again := h.tn.SeedCustomGroup("g"); again != g {
		t.Errorf("seeding again: %+v, want %+v", again, g)
	}
	idp, ok := h.tn.SeedIdPGroup(h.user.ID, "g")
	if !ok || idp.ID == g.ID || idp.ProviderType != qliktest.ProviderIdP {
		t.Fatalf("SeedIdPGroup = %+v, %v", idp, ok)
	}
	if _, ok := h.tn.SeedIdPGroup("nobody", "g"); ok {
		t.Error("SeedIdPGroup of an unknown user")
	}
	for range 2 { // the second time is a no-op
		if !h.tn.AssignGroup(h.user.ID, g.ID) {
			t.Error("AssignGroup")
		}
	}
	if h.tn.AssignGroup(h.user.ID, qliktest.EveryoneID) || h.tn.AssignGroup("nobody", g.ID) || h.tn.AssignGroup(h.user.ID, "nothing") {
		t.Error("AssignGroup accepted an unknown user or group")
	}
	if got := h.tn.UserGroups(h.user.ID); len(got) != 2 || got[0] != idp || got[1] != g {
		t.Errorf("UserGroups = %+v", got)
	}
	if got := h.tn.Groups(); len(got) != 2 || got[0] != g || got[1] != idp {
		t.Errorf("Groups = %+v", got)
	}
	if !h.tn.RemoveGroup(g.ID) || h.tn.RemoveGroup(g.ID) {
		t.Error("RemoveGroup")
	}
	if got := h.tn.UserGroups(h.user.ID); len(got) != 1 || got[0] != idp {
		t.Errorf("UserGroups after RemoveGroup = %+v", got)
	}
	if got := h.tn.Groups(); len(got) != 1 || got[0] != idp {
		t.Errorf("Groups after RemoveGroup = %+v", got)
	}
	if h.tn.CallCounts() == nil || len(h.tn.CallCounts()) != 0 {
		t.Errorf("hooks were counted as calls: %v", h.tn.CallCounts())
	}
}
