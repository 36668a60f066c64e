package broker_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Groups from the session, through HTTP, against the fake tenant's groups
// and users APIs and a real Redis.

const (
	testGroupsClaim  = "groups"
	testGroupsPrefix = "acme-"
)

// groupsVerifier is a session config whose tokens carry the groups claim.
func groupsVerifier() session.Config {
	return session.Config{HMACSecret: hmacKey, GroupsClaim: func(string) string { return testGroupsClaim }}
}

// groupsTune turns the groups sync on for the tenant, with an admin client
// of the fake tenant (each replica its own admin token).
func groupsTune(tn *qliktest.Tenant, clk *clock, admin qliktest.OAuthClient) func(*broker.Config) {
	return func(c *broker.Config) {
		qc, err := qlik.New(tn.URL(), qlik.Options{Now: clk.Now})
		if err != nil {
			panic(err)
		}
		dir := &broker.QlikDirectory{Client: qc, Now: clk.Now,
			Admin: qlik.Credentials{ClientID: admin.ID, ClientSecret: admin.Secret}}
		c.Tenants[0].Groups = dir.Groups()
		c.Tenants[0].GroupsClaim = testGroupsClaim
		c.Tenants[0].GroupsPrefix = testGroupsPrefix
	}
}

// newGroupsTenant is a fake tenant on a test clock with the broker's
// client ("client-1") and an admin client for the groups sync.
func newGroupsTenant(t *testing.T) (*clock, *qliktest.Tenant, qliktest.OAuthClient) {
	t.Helper()
	clk := newClock()
	tn, err := qliktest.New(qliktest.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
	return clk, tn, tn.AddAdminClient()
}

// groupsSession mints a session token for userID whose groups claim is
// groups (any JSON value; nil leaves the claim out).
func groupsSession(t *testing.T, clk *clock, userID string, groups any) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": userID, "iat": clk.Now().Unix(), "exp": clk.Now().Add(time.Hour).Unix()}
	if groups != nil {
		claims[testGroupsClaim] = groups
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(hmacKey)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// groupNamesOf lists the names of groups by kind, sorted: "custom:acme-a".
func groupNamesOf(gs []qliktest.Group) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.ProviderType+":"+g.Name)
	}
	slices.Sort(out)
	return out
}

// adminCalls are the fake's users and groups API calls since the last
// ResetCounters (token calls are not among them).
func adminCalls(tn *qliktest.Tenant) map[qliktest.Call]int {
	out := map[qliktest.Call]int{}
	for c, n := range tn.CallCounts() {
		if strings.Contains(string(c), "/api/v1/") {
			out[c] = n
		}
	}
	return out
}

// tokenOrder wraps the real client and records, at each impersonation
// token call, the user's groups the tenant holds at that moment: the proof
// that the sync came first.
type tokenOrder struct {
	broker.Issuer
	tn     *qliktest.Tenant
	userID string
	mu     sync.Mutex
	seen   [][]string
}

func (o *tokenOrder) ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error) {
	o.mu.Lock()
	o.seen = append(o.seen, groupNamesOf(o.tn.UserGroups(o.userID)))
	o.mu.Unlock()
	return o.Issuer.ImpersonationToken(ctx, creds, user, scope)
}

func (o *tokenOrder) calls() [][]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.seen)
}

// patchOps renders the fake's recorded patches as "op path value" lines,
// group ids replaced by names.
func patchOps(tn *qliktest.Tenant) [][]string {
	names := map[string]string{}
	for _, g := range tn.Groups() {
		names[g.ID] = g.Name
	}
	var out [][]string
	for _, p := range tn.UserPatches() {
		var ops []string
		for _, op := range p.Ops {
			ops = append(ops, op.Op+" "+op.Path+" "+names[op.Value])
		}
		slices.Sort(ops)
		out = append(out, ops)
	}
	return out
}

// TestGroupsSyncThroughHTTP: a first request with [a, b] creates both
// groups and adds both memberships, then mints (the tenant held them when
// the token was asked for); the same set again costs no admin call; [b, c]
// removes a and adds c, nothing else; an IdP group, a custom group outside
// the prefix and a claim name outside the prefix are never touched.
func TestGroupsSyncThroughHTTP(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	ada := tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Email: "ada@example.com", Status: "active"})
	order := &tokenOrder{tn: tn, userID: ada.ID}
	rdb := redistest.Start(t)
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(), tune: groupsTune(tn, clk, admin),
		shared: newRedisClient(t, cache.RedisOptions{URL: rdb.URL()}),
		issuer: func(next broker.Issuer) broker.Issuer { order.Issuer = next; return order }})
	if _, ok := tn.SeedIdPGroup(ada.ID, "acme-idp"); !ok {
		t.Fatal("seeding the IdP group failed")
	}
	other := tn.SeedCustomGroup("other-team")
	tn.AssignGroup(ada.ID, other.ID)
	untouched := []string{"custom:other-team", "idp:acme-idp"}
	tn.ResetCounters()

	// First request: [a, b] (and a name outside the prefix).
	resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-b", "acme-a", "elsewhere"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("first request: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	if e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
		t.Fatal("the token does not act for ada")
	}
	want := append([]string{"custom:acme-a", "custom:acme-b"}, untouched...)
	slices.Sort(want)
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, want) {
		t.Fatalf("ada's groups = %q, want %q", got, want)
	}
	if got := order.calls(); len(got) != 1 || !slices.Equal(got[0], want) {
		t.Fatalf("at the token call the tenant held %q; want one call after the sync, holding %q", got, want)
	}
	if got := patchOps(tn); !slices.Equal(flat(got), []string{"add /assignedGroups/- acme-a", "add /assignedGroups/- acme-b"}) || len(got) != 1 {
		t.Fatalf("patches = %q, want one adding acme-a and acme-b", got)
	}
	if n := tn.CallsTo(qliktest.CallGroupCreate); n != 2 {
		t.Fatalf("%d groups created, want 2", n)
	}
	for _, g := range tn.Groups() {
		if g.Name == "elsewhere" {
			t.Fatal("a claim name outside the prefix was created")
		}
	}

	// The same set again (reordered, repeated, a new session token): no
	// admin call, no token call, no header.
	tn.ResetCounters()
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a", "acme-b", "acme-a", "elsewhere"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != "" {
		t.Fatalf("same set: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	if calls := tn.CallCounts(); len(calls) != 0 {
		t.Fatalf("the same set cost tenant calls: %v", calls)
	}

	// [b, c]: a removed and c added in one patch, the cached token served.
	tn.ResetCounters()
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-b", "acme-c"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("[b, c]: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	want = append([]string{"custom:acme-b", "custom:acme-c"}, untouched...)
	slices.Sort(want)
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, want) {
		t.Fatalf("ada's groups = %q, want %q", got, want)
	}
	if got := patchOps(tn); len(got) != 1 || !slices.Equal(got[0], []string{"add /assignedGroups/- acme-c", "remove-value /assignedGroups acme-a"}) {
		t.Fatalf("patches = %q, want one adding acme-c and removing acme-a", got)
	}
	wantCalls := map[qliktest.Call]int{qliktest.CallUserGet: 1, qliktest.CallGroupList: 1, qliktest.CallGroupCreate: 1, qliktest.CallUserPatch: 1}
	if got := adminCalls(tn); !mapsEqual(got, wantCalls) {
		t.Fatalf("admin calls %v, want %v", got, wantCalls)
	}
	if n := tn.Calls(qliktest.EndpointToken); n != 0 {
		t.Fatalf("%d token calls for a cached token", n)
	}

	// An empty list removes every group within the prefix, and only those.
	tn.ResetCounters()
	if resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{}), nil); resp.StatusCode != 200 {
		t.Fatalf("[]: %d %s", resp.StatusCode, body)
	}
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, untouched) {
		t.Fatalf("ada's groups = %q, want %q", got, untouched)
	}
	// A session without the claim syncs nothing.
	tn.ResetCounters()
	if resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, nil), nil); resp.StatusCode != 200 || len(adminCalls(tn)) != 0 {
		t.Fatalf("no claim: %d %s, admin calls %v", resp.StatusCode, body, adminCalls(tn))
	}
	if v := testutil.ToFloat64(e.metrics.GroupSyncs.WithLabelValues("acme", "synced")); v != 3 {
		t.Fatalf("groups_syncs_total{result=synced} = %v, want 3", v)
	}
}

func flat(ss [][]string) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s...)
	}
	return out
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestGroupsBadClaims: a groups claim that cannot be synced as it is
// (not a list, a non-string entry, more than the max, a name over 256
// characters) is 401 bad_groups_claim, counted, with no tenant call.
func TestGroupsBadClaims(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(), tune: groupsTune(tn, clk, admin),
		shared: newRedisStore(t)})
	ada := e.addUser("Ada")
	tn.ResetCounters()
	many := make([]string, session.DefaultMaxGroups+1)
	for i := range many {
		many[i] = fmt.Sprintf("acme-%d", i)
	}
	bad := []any{"acme-a acme-b", []any{"acme-a", 7}, many, []string{"acme-" + strings.Repeat("x", 252)}, map[string]any{"acme-a": true}}
	for i, claim := range bad {
		resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, claim), nil)
		eb := decodeErrorBody(t, body)
		if resp.StatusCode != 401 || eb.Error != "invalid_session" || !strings.Contains(eb.Message, "bad_groups_claim") {
			t.Fatalf("claim #%d: %d %+v", i, resp.StatusCode, eb)
		}
	}
	if calls := tn.CallCounts(); len(calls) != 0 {
		t.Fatalf("bad claims cost tenant calls: %v", calls)
	}
	if v := testutil.ToFloat64(e.metrics.SessionRejections.WithLabelValues("bad_groups_claim")); v != float64(len(bad)) {
		t.Fatalf("session_rejections_total{reason=bad_groups_claim} = %v, want %d", v, len(bad))
	}
}

// TestGroupsSyncOnceAcrossReplicas: two replicas on one Redis and 50
// concurrent first requests of one user sync once and mint once.
func TestGroupsSyncOnceAcrossReplicas(t *testing.T) {
	d := newDeployment(t, 0, nil)
	admin := d.tenant.AddAdminClient()
	d.session = groupsVerifier()
	d.tune = groupsTune(d.tenant, d.clock, admin)
	d.add(nil)
	d.add(nil)
	ada := d.replicas[0].addUser("Ada")
	d.tenant.ResetCounters()
	tok := groupsSession(t, d.clock, ada.ID, []string{"acme-a", "acme-b"})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 50 {
		wg.Go(func() {
			r := d.replicas[i%2]
			if code, body := getToken(r.srv.Client(), r.srv.URL, tok); code != 200 {
				failed.Add(1)
				t.Errorf("request %d: %d %s", i, code, body)
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.FailNow()
	}
	want := map[qliktest.Call]int{qliktest.CallUserGet: 1, qliktest.CallGroupList: 2, qliktest.CallGroupCreate: 2, qliktest.CallUserPatch: 1}
	if got := adminCalls(d.tenant); !mapsEqual(got, want) {
		t.Fatalf("admin calls %v, want one sync: %v", got, want)
	}
	if n := d.tenant.UserTokenCalls(ada.ID); n != 1 {
		t.Fatalf("%d token calls, want 1", n)
	}
	if got := groupNamesOf(d.tenant.UserGroups(ada.ID)); !slices.Equal(got, []string{"custom:acme-a", "custom:acme-b"}) {
		t.Fatalf("ada's groups = %q", got)
	}
	d.waitBackground()
}

// TestGroupsPartialPatchRetried: a 207 stores no hash: the request holding
// a token gets it with X-QTB-Groups: pending, one without gets 502
// groups_sync_failed, and the next request syncs again.
func TestGroupsPartialPatchRetried(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	rdb := redistest.Start(t)
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(), tune: groupsTune(tn, clk, admin),
		shared: newRedisClient(t, cache.RedisOptions{URL: rdb.URL()})})
	ada, bob := e.addUser("Ada"), e.addUser("Bob")
	groupsKey := "qtb:groups:" + strings.TrimPrefix(e.broker.TokenKey(qlik.FieldUserID, ada.ID), "qtb:tok:")
	stored := func() string {
		v, err := rdb.Client(t).Get(context.Background(), groupsKey).Result()
		if err != nil {
			return ""
		}
		return v
	}

	if resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a"}), nil); resp.StatusCode != 200 {
		t.Fatalf("first: %d %s", resp.StatusCode, body)
	}
	before := stored()
	if before == "" {
		t.Fatal("no hash stored after a sync")
	}

	tn.FailUserPatches(1, "acme-b")
	resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a", "acme-b", "acme-c"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsPending {
		t.Fatalf("207: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	if got := stored(); got != before {
		t.Fatal("a partial sync stored its hash")
	}
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, []string{"custom:acme-a", "custom:acme-c"}) {
		t.Fatalf("after the 207 ada's groups = %q", got)
	}
	if v := testutil.ToFloat64(e.metrics.GroupSyncs.WithLabelValues("acme", "partial")); v != 1 {
		t.Fatalf("groups_syncs_total{result=partial} = %v", v)
	}
	if v := testutil.ToFloat64(e.metrics.GroupChanges.WithLabelValues("acme", "failed")); v != 1 {
		t.Fatalf("groups_changes_total{change=failed} = %v", v)
	}

	// The next request syncs what is left: add b only.
	tn.ResetCounters()
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a", "acme-b", "acme-c"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("retry: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	if got := patchOps(tn); len(got) != 1 || !slices.Equal(got[0], []string{"add /assignedGroups/- acme-b"}) {
		t.Fatalf("retry patches = %q", got)
	}
	if got := stored(); got == "" || got == before {
		t.Fatal("the retried sync stored no new hash")
	}

	// A user without a token gets no token while a 207 stands.
	tn.FailUserPatches(1)
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, bob.ID, []string{"acme-a"}), nil)
	if eb := decodeErrorBody(t, body); resp.StatusCode != http.StatusBadGateway || eb.Error != "groups_sync_failed" {
		t.Fatalf("207 without a token: %d %+v", resp.StatusCode, eb)
	}
	if n := tn.UserTokenCalls(bob.ID); n != 0 {
		t.Fatalf("bob got %d token calls before his groups were synced", n)
	}
}

// TestGroupsCooldownServesCachedToken: a 429 on a sync's write starts the
// tenant's cooldown; while it lasts a user holding a token gets it with
// X-QTB-Groups: pending and no tenant call, a user without one gets the
// cooldown's 503 with Retry-After; after it the sync goes through.
func TestGroupsCooldownServesCachedToken(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(), tune: groupsTune(tn, clk, admin),
		shared: newRedisStore(t)})
	ada, bob := e.addUser("Ada"), e.addUser("Bob")
	first, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a"}), nil)
	if first.StatusCode != 200 {
		t.Fatalf("first: %d %s", first.StatusCode, body)
	}
	held := decodeTokenBody(t, body).AccessToken

	tn.InjectFault(qliktest.EndpointUserPatch, qliktest.Fault{Status: 429, RetryAfter: "60"})
	changed := groupsSession(t, clk, ada.ID, []string{"acme-a", "acme-b"})
	resp, body := e.do("GET", "/v1/token", changed, nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsPending || decodeTokenBody(t, body).AccessToken != held {
		t.Fatalf("429: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}

	tn.ResetCounters()
	clk.Advance(30 * time.Second)
	resp, body = e.do("GET", "/v1/token", changed, nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsPending || decodeTokenBody(t, body).AccessToken != held {
		t.Fatalf("cooling down: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, bob.ID, []string{"acme-a"}), nil)
	if eb := decodeErrorBody(t, body); resp.StatusCode != 503 || eb.Error != "upstream_rate_limited" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("cooling down, no token: %d %+v Retry-After=%q", resp.StatusCode, eb, resp.Header.Get("Retry-After"))
	}
	if calls := tn.CallCounts(); len(calls) != 0 {
		t.Fatalf("calls during the cooldown: %v", calls)
	}

	clk.Advance(31 * time.Second)
	resp, body = e.do("GET", "/v1/token", changed, nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("after the cooldown: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, []string{"custom:acme-a", "custom:acme-b"}) {
		t.Fatalf("ada's groups = %q", got)
	}
	// The 429 itself, ada's request and bob's during the cooldown.
	if v := testutil.ToFloat64(e.metrics.GroupSyncs.WithLabelValues("acme", "deferred")); v != 3 {
		t.Fatalf("groups_syncs_total{result=deferred} = %v, want 3", v)
	}
}

// TestGroupsSpendTheUserBudget: each write of a sync (a create, the patch)
// spends from the identity's QTB_USER_RATE bucket; once it is spent, a user
// holding a token gets it as pending, and a user without one gets 429
// rate_limited, no token minted before the sync.
func TestGroupsSpendTheUserBudget(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	// One request a minute, a bucket of 4: the request itself takes one.
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(), tune: groupsTune(tn, clk, admin),
		shared: newRedisStore(t), userRate: 1.0 / 60, userBurst: 4})
	ada, bob := e.addUser("Ada"), e.addUser("Bob")

	// Ada: 1 (the request) of 4; nothing to change, then a token.
	if resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{}), nil); resp.StatusCode != 200 {
		t.Fatalf("first: %d %s", resp.StatusCode, body)
	}
	// 1 (the request) + 2 creates of the 3 left: no room for the patch.
	resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a", "acme-b"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsPending {
		t.Fatalf("budget spent, token held: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	if n := tn.CallsTo(qliktest.CallUserPatch); n != 0 {
		t.Fatalf("%d patches past the budget", n)
	}

	// Bob: 1 (request) + 3 creates of 4, no room for the patch, no token.
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, bob.ID, []string{"acme-x", "acme-y", "acme-z"}), nil)
	if eb := decodeErrorBody(t, body); resp.StatusCode != 429 || eb.Error != "rate_limited" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("budget spent, no token: %d %+v", resp.StatusCode, eb)
	}
	if n := tn.UserTokenCalls(bob.ID); n != 0 {
		t.Fatalf("bob got %d token calls before his groups were synced", n)
	}

	// Refilled, the syncs finish with the groups already created.
	clk.Advance(10 * time.Minute)
	tn.ResetCounters()
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, bob.ID, []string{"acme-x", "acme-y", "acme-z"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("refilled: %d %s", resp.StatusCode, body)
	}
	if n := tn.CallsTo(qliktest.CallGroupCreate); n != 0 {
		t.Fatalf("%d groups created again", n)
	}
}

// TestGroupsWithoutRedisBySubject: without Redis the synced set is
// remembered in memory (the same set again costs nothing), and a session
// naming the user by subject is synced through one users-API search.
func TestGroupsWithoutRedisBySubject(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	sc := groupsVerifier()
	sc.UserLookup = session.LookupSubject
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: sc, tune: groupsTune(tn, clk, admin)})
	ada := e.addUser("Ada")
	tn.ResetCounters()
	resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.Subject, []string{"acme-a"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("first: %d %s", resp.StatusCode, body)
	}
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, []string{"custom:acme-a"}) {
		t.Fatalf("ada's groups = %q", got)
	}
	if n := tn.CallsTo(qliktest.CallUserList); n != 1 {
		t.Fatalf("%d user searches, want 1", n)
	}
	tn.ResetCounters()
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.Subject, []string{"acme-a"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != "" || len(tn.CallCounts()) != 0 {
		t.Fatalf("same set: %d %s, calls %v", resp.StatusCode, body, tn.CallCounts())
	}
}

// TestGroupsSyncedBeforeProxying: a proxied request is a request for the
// user's token too: a changed claim is synced before it goes to the tenant.
func TestGroupsSyncedBeforeProxying(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(), tune: groupsTune(tn, clk, admin),
		shared: newRedisStore(t)})
	ada := e.addUser("Ada")
	resp, body := e.do("GET", "/v1/qlik/api/v1/users/me", groupsSession(t, clk, ada.ID, []string{"acme-a"}), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("proxied: %d %s", resp.StatusCode, body)
	}
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, []string{"custom:acme-a"}) {
		t.Fatalf("ada's groups = %q", got)
	}
}

// TestGroupsCreateRaceAndStaleIDs: a create that loses a race (409) finds
// the group by name and goes on; a remembered group id that went stale (the
// group deleted in the console) makes the patch a 400, after which the sync
// reads again, resolves the names again (creating the group anew) and
// patches once more.
func TestGroupsCreateRaceAndStaleIDs(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(), tune: groupsTune(tn, clk, admin),
		shared: newRedisStore(t)})
	ada := e.addUser("Ada")
	tn.RaceGroupCreate("acme-a")
	resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("409 race: %d %s", resp.StatusCode, body)
	}
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, []string{"custom:acme-a"}) {
		t.Fatalf("after the race ada's groups = %q", got)
	}
	if n := tn.CallsTo(qliktest.CallGroupCreate); n != 1 {
		t.Fatalf("%d creates, want the one answered 409", n)
	}
	if v := testutil.ToFloat64(e.metrics.GroupChanges.WithLabelValues("acme", "created")); v != 0 {
		t.Fatalf("a group another created counted as created: %v", v)
	}

	stale := tn.UserGroups(ada.ID)[0].ID
	if !tn.RemoveGroup(stale) {
		t.Fatal("removing the group failed")
	}
	tn.ResetCounters()
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-a", "acme-b"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("stale id: %d %s", resp.StatusCode, body)
	}
	got := tn.UserGroups(ada.ID)
	if names := groupNamesOf(got); !slices.Equal(names, []string{"custom:acme-a", "custom:acme-b"}) {
		t.Fatalf("after the stale id ada's groups = %q", names)
	}
	for _, g := range got {
		if g.ID == stale {
			t.Fatal("the stale id is still assigned")
		}
	}
	if p := tn.UserPatches(); len(p) != 2 || p[0].Status != 400 || p[1].Status != 204 {
		t.Fatalf("patches %+v, want a 400 then a 204", p)
	}

	// A tenant that answers a stale group id with 404 (the reference lists
	// 404 for the patch) gets the same one re-read and second patch (a new
	// set, so that a sync runs: [a, b] is the one remembered).
	var staleB string
	for _, g := range got {
		if g.Name == "acme-b" {
			staleB = g.ID
		}
	}
	if !tn.RemoveGroup(staleB) {
		t.Fatal("removing acme-b failed")
	}
	tn.InjectFault(qliktest.EndpointUserPatch, qliktest.Fault{Status: http.StatusNotFound})
	tn.ResetCounters()
	resp, body = e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, []string{"acme-b", "acme-a", "acme-c"}), nil)
	if resp.StatusCode != 200 || resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("stale id answered 404: %d %s=%q %s", resp.StatusCode, broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader), body)
	}
	if names := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(names, []string{"custom:acme-a", "custom:acme-b", "custom:acme-c"}) {
		t.Fatalf("after the 404 ada's groups = %q", names)
	}
	if n := tn.CallsTo(qliktest.CallUserPatch); n != 2 {
		t.Fatalf("%d patches, want the one answered 404 and one more", n)
	}
}

// TestGroupsSetTrustedForL1TTL: with Redis and L1, a set Redis confirmed is
// trusted for QTB_L1_TTL without asking Redis again (the hot path costs no
// round trip for unchanged groups); past it Redis is asked, and a set Redis
// no longer holds is read from the tenant again. A changed set is never
// answered from the memo.
func TestGroupsSetTrustedForL1TTL(t *testing.T) {
	clk, tn, admin := newGroupsTenant(t)
	ada := tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Email: "ada@example.com", Status: "active"})
	rdb := redistest.Start(t)
	const l1TTL = time.Minute
	tune := groupsTune(tn, clk, admin)
	e := newEnv(t, envOptions{clock: clk, tenant: tn, session: groupsVerifier(),
		tune:   func(c *broker.Config) { tune(c); c.L1TTL = l1TTL },
		shared: newRedisClient(t, cache.RedisOptions{URL: rdb.URL()})})
	get := func(groups []string) (*http.Response, []byte) {
		t.Helper()
		resp, body := e.do("GET", "/v1/token", groupsSession(t, clk, ada.ID, groups), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%v: %d %s", groups, resp.StatusCode, body)
		}
		return resp, body
	}
	get([]string{"acme-a"})
	rc := rdb.Client(t)
	ctx := context.Background()
	keys, err := rc.Keys(ctx, "qtb:groups:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("groups keys in Redis: %q, %v", keys, err)
	}
	// Redis loses the set behind the broker's back (a flush): within
	// L1TTL the memo answers, so nothing is asked of the tenant.
	if err := rc.Del(ctx, keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
	tn.ResetCounters()
	clk.Advance(l1TTL / 2)
	if resp, _ := get([]string{"acme-a"}); resp.Header.Get(broker.GroupsHeader) != "" {
		t.Fatalf("within L1TTL: %s=%q, want no sync", broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader))
	}
	if calls := adminCalls(tn); len(calls) != 0 {
		t.Fatalf("within L1TTL the unchanged set cost tenant calls: %v", calls)
	}
	// A changed set is never answered from the memo.
	if resp, _ := get([]string{"acme-b"}); resp.Header.Get(broker.GroupsHeader) != broker.GroupsSynced {
		t.Fatalf("changed set: %s=%q, want synced", broker.GroupsHeader, resp.Header.Get(broker.GroupsHeader))
	}
	if got := groupNamesOf(tn.UserGroups(ada.ID)); !slices.Equal(got, []string{"custom:acme-b"}) {
		t.Fatalf("ada's groups = %q", got)
	}
	// Past L1TTL Redis is asked again: with the key gone, the user's groups
	// are read once (already in step: no write), and the set stored again.
	if err := rc.Del(ctx, keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
	tn.ResetCounters()
	clk.Advance(l1TTL + time.Second)
	get([]string{"acme-b"})
	want := map[qliktest.Call]int{qliktest.CallUserGet: 1}
	if got := adminCalls(tn); !mapsEqual(got, want) {
		t.Fatalf("past L1TTL: admin calls %v, want %v", got, want)
	}
	if n, err := rc.Exists(ctx, keys[0]).Result(); err != nil || n != 1 {
		t.Fatalf("the set was not stored again: %d, %v", n, err)
	}
}
