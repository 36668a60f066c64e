package qliktest

import (
	"cmp"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// The groups API (shared/qlik-api.md section 9): POST and GET
// /api/v1/groups, GET /api/v1/groups/{id}. Errors type status as a number
// (the groups reference does), with a traceId. Only tokens with
// admin_classic may call it: Qlik's scope list has no groups scope (section
// 9, inferred). POST is a Tier-2 write (the quota and WithRateLimit apply);
// the GETs are Tier 1.
//
//	/api/v1/groups (status a number; the fake's own codes, as for the users API)
//	  400 GROUPS-1  the filter is not in the groups grammar (groupsFilter)
//	  400 GROUPS-2  the body, sort, limit, cursor or systemGroups combination is invalid
//	  404 GROUPS-7  no group with this id (the reference's example code)
//	  409 GROUPS-9  a group of this provider type has this exact name
//
// Names are case-sensitive and unique per provider type: a custom group may
// have the name of an IdP group (section 9); two custom groups (or two IdP
// groups) may not. A name is 1 to 256 characters (runes). providerType
// omitted means "idp"; status omitted means "active", the only value
// accepted. The 10,000-groups-per-tenant cap is not modelled.
const (
	codeGroupsFilter   = "GROUPS-1"
	codeGroupsBad      = "GROUPS-2"
	codeGroupsNotFound = "GROUPS-7"
	codeGroupsConflict = "GROUPS-9"
)

// Group provider types, and the system group every user is in.
const (
	ProviderCustom = "custom"
	ProviderIdP    = "idp"

	// EveryoneID and EveryoneName are the system group com.qlik.Everyone
	// (section 9), which every user is in implicitly: it is in no user's
	// assignedGroups (whether Qlik lists it there is UNCONFIRMED; the
	// reference says only that ?fields=groups leaves system groups out),
	// GET /api/v1/groups lists it only with systemGroups=true, GET
	// /api/v1/groups/{id} answers it, and membership patches cannot touch
	// it (400 USERS-11).
	EveryoneID   = "000000000000000000000001"
	EveryoneName = "com.qlik.Everyone"
)

// maxGroupName is the reference's limit on a group name, in characters.
const maxGroupName = 256

// Group is a group of the tenant as the test hooks report it.
type Group struct {
	ID           string // 24 hex digits
	Name         string
	ProviderType string // ProviderCustom, ProviderIdP, or "" for the system group
	Description  string
	Status       string // "active"
}

// groupRecord is a stored group.
type groupRecord struct {
	Group
	seq              int64 // creation order
	created, updated time.Time
	createdBy        string // user id of the creating token; "" when seeded
	roles            []roleRef
}

// roleRef is an assignedRoles entry as given on create (the fake keeps no
// roles of its own and echoes what it was given).
type roleRef struct {
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
}

// groupState is the groups and memberships of a tenant, guarded by
// Tenant.mu. Its maps are made on first write.
type groupState struct {
	tenantID string
	seq      int64
	byID     map[string]*groupRecord
	members  map[string][]string // user id -> group ids, in assignment order
	patches  []UserPatch         // the user patch log (membership.go)
	raced    []string            // RaceGroupCreate names
	partial  []partialRule       // queued 207 answers (membership.go)
}

func (g *groupState) initLocked() {
	if g.byID == nil {
		g.byID = make(map[string]*groupRecord)
		g.members = make(map[string][]string)
		g.tenantID = randomHex(16)
	}
}

// findLocked returns the group of this provider type with exactly this name.
func (g *groupState) findLocked(name, providerType string) *groupRecord {
	for _, rec := range g.byID {
		if rec.Name == name && rec.ProviderType == providerType {
			return rec
		}
	}
	return nil
}

func (g *groupState) addLocked(grp Group, now time.Time, createdBy string, roles []roleRef) *groupRecord {
	g.initLocked()
	grp.ID = randomHex(12)
	if grp.Status == "" {
		grp.Status = StatusActive
	}
	g.seq++
	rec := &groupRecord{Group: grp, seq: g.seq, created: now, updated: now, createdBy: createdBy, roles: roles}
	g.byID[grp.ID] = rec
	return rec
}

// everyone is the system group.
var everyone = Group{ID: EveryoneID, Name: EveryoneName, Status: StatusActive}

// SeedCustomGroup stores a custom group named name, as POST /api/v1/groups
// would (no call is counted), and returns it. When a custom group of that
// exact name exists it is returned unchanged.
func (t *Tenant) SeedCustomGroup(name string) Group {
	return t.seedGroup(name, ProviderCustom)
}

func (t *Tenant) seedGroup(name, providerType string) Group {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec := t.groups.findLocked(name, providerType); rec != nil {
		return rec.Group
	}
	return t.groups.addLocked(Group{Name: name, ProviderType: providerType}, t.now(), "", nil).Group
}

// RaceGroupCreate makes the next POST /api/v1/groups of a custom group
// named name lose a race: just before it is handled, the group is created
// as by another replica or an admin (as SeedCustomGroup does), so the
// request is answered 409 and a lookup by name then finds the group. Calls
// add up, one per name.
func (t *Tenant) RaceGroupCreate(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.groups.raced = append(t.groups.raced, name)
}

// SeedIdPGroup makes user userID a member of the IdP group named name, as a
// login through the IdP with that group claim would, creating the group
// when the tenant has no IdP group of that name. It returns the group, and
// false (and no group) when there is no such user.
func (t *Tenant) SeedIdPGroup(userID, name string) (Group, bool) {
	t.mu.Lock()
	if _, ok := t.users[userID]; !ok {
		t.mu.Unlock()
		return Group{}, false
	}
	t.mu.Unlock()
	grp := t.seedGroup(name, ProviderIdP)
	return grp, t.AssignGroup(userID, grp.ID)
}

// AssignGroup makes user userID a member of group groupID (of any provider
// type) without going through the API and its rules, as an IdP login or an
// earlier admin would have. It reports false when the user or the group is
// unknown, or the group is the system group. Assigning a group the user
// has already is a no-op that reports true.
func (t *Tenant) AssignGroup(userID, groupID string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.users[userID]; !ok {
		return false
	}
	if _, ok := t.groups.byID[groupID]; !ok {
		return false
	}
	if !slices.Contains(t.groups.members[userID], groupID) {
		t.groups.members[userID] = append(t.groups.members[userID], groupID)
	}
	return true
}

// RemoveGroup deletes group groupID and every membership of it, as an
// admin deleting it in the console would, so that an id a client
// remembered goes stale. It reports false for an unknown group.
func (t *Tenant) RemoveGroup(groupID string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.groups.byID[groupID]; !ok {
		return false
	}
	delete(t.groups.byID, groupID)
	for user, ids := range t.groups.members {
		t.groups.members[user] = slices.DeleteFunc(ids, func(id string) bool { return id == groupID })
	}
	return true
}

// UserGroups returns the groups user userID is a member of, in the order
// they were assigned, without the system group every user is implicitly
// in; nil for an unknown user or one without groups.
func (t *Tenant) UserGroups(userID string) []Group {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Group
	for _, id := range t.groups.members[userID] {
		if rec, ok := t.groups.byID[id]; ok {
			out = append(out, rec.Group)
		}
	}
	return out
}

// Groups returns every IdP and custom group of the tenant in creation
// order (the system group is not among them).
func (t *Tenant) Groups() []Group {
	t.mu.Lock()
	recs := t.sortedGroupsLocked(nil, "", false)
	t.mu.Unlock()
	out := make([]Group, len(recs))
	for i, rec := range recs {
		out[i] = rec.Group
	}
	return out
}

// sortedGroupsLocked returns the stored groups matching filter, sorted by
// field (name, or "" for creation order).
func (t *Tenant) sortedGroupsLocked(filter filterExpr, field string, desc bool) []groupRecord {
	var out []groupRecord
	for _, rec := range t.groups.byID {
		if filter == nil || filter.match(rec.attr) {
			out = append(out, *rec)
		}
	}
	slices.SortFunc(out, func(a, b groupRecord) int {
		c := cmp.Compare(a.seq, b.seq)
		if field == "name" {
			c = cmp.Or(strings.Compare(strings.ToLower(a.Name), strings.ToLower(b.Name)), c)
		}
		if desc {
			return -c
		}
		return c
	})
	return out
}

func (g *groupRecord) attr(name string) string {
	switch name {
	case "id":
		return g.ID
	case "name":
		return g.Name
	case "providerType":
		return g.ProviderType
	case "status":
		return g.Status
	case "description":
		return g.Description
	}
	return ""
}

// groupsFilter parses a filter of GET /api/v1/groups: SCIM (RFC 7644, as
// the reference says) on id, name, providerType, status and description,
// every operator, compared case-insensitively as the reference says of all
// its conditions. So `name eq "Sales"` also matches a group named "SALES":
// a client that wants one exact name compares again itself.
func groupsFilter(s string) (filterExpr, error) {
	return parseFilter(s, "id", "name", "providerType", "status", "description")
}

// groupDoc is a group on the wire, as the reference's Group schema has it.
type groupDoc struct {
	ID            string    `json:"id"`
	TenantID      string    `json:"tenantId"`
	Name          string    `json:"name"`
	Description   string    `json:"description,omitempty"`
	Status        string    `json:"status"`
	ProviderType  string    `json:"providerType,omitempty"`
	AssignedRoles []roleRef `json:"assignedRoles"`
	CreatedAt     string    `json:"createdAt"`
	LastUpdatedAt string    `json:"lastUpdatedAt"`
	CreatedBy     string    `json:"createdBy,omitempty"`
	UpdatedBy     string    `json:"updatedBy,omitempty"`
	Links         struct {
		Self link `json:"self"`
	} `json:"links"`
}

func (t *Tenant) groupDocLocked(r *http.Request, rec groupRecord) groupDoc {
	t.groups.initLocked() // the tenant id
	roles := rec.roles
	if roles == nil {
		roles = []roleRef{}
	}
	d := groupDoc{
		ID: rec.ID, TenantID: t.groups.tenantID, Name: rec.Name, Description: rec.Description,
		Status: rec.Status, ProviderType: rec.ProviderType, AssignedRoles: roles,
		CreatedAt: timestamp(rec.created), LastUpdatedAt: timestamp(rec.updated),
		CreatedBy: rec.createdBy, UpdatedBy: rec.createdBy,
	}
	d.Links.Self.Href = "http://" + r.Host + "/api/v1/groups/" + rec.ID
	return d
}

// groupsError is a refusal of the groups API, status a number.
func groupsError(status int, code, detail string) *apiError {
	return usersError(status, code, detail)
}

// handleCreateGroup answers POST /api/v1/groups.
func (t *Tenant) handleCreateGroup(w http.ResponseWriter, r *http.Request) {
	claims, apiErr := t.authorize(r, scopeAdminClassic)
	if apiErr != nil {
		apiErr.asUsers().write(w)
		return
	}
	var body struct {
		Name          *string   `json:"name"`
		ProviderType  *string   `json:"providerType"`
		Status        *string   `json:"status"`
		Description   string    `json:"description"`
		AssignedRoles []roleRef `json:"assignedRoles"`
	}
	if apiErr := decodeJSON(r, &body, "application/json"); apiErr != nil {
		groupsError(apiErr.status, codeGroupsBad, apiErr.detail).write(w)
		return
	}
	bad := func(detail string) { groupsError(http.StatusBadRequest, codeGroupsBad, detail).write(w) }
	grp := Group{ProviderType: ProviderIdP, Status: StatusActive, Description: body.Description}
	switch {
	case body.Name == nil || strings.TrimSpace(*body.Name) == "":
		bad("name is required.")
		return
	case utf8.RuneCountInString(*body.Name) > maxGroupName:
		bad("name must be at most 256 characters.")
		return
	case body.ProviderType != nil && *body.ProviderType != ProviderIdP && *body.ProviderType != ProviderCustom:
		bad(`providerType must be "idp" or "custom".`)
		return
	case body.Status != nil && *body.Status != StatusActive:
		bad(`status must be "active".`)
		return
	case len(body.AssignedRoles) > 100:
		bad("at most 100 roles can be assigned to a group.")
		return
	}
	for _, role := range body.AssignedRoles {
		if (role.ID == "") == (role.Name == "") {
			bad("each assignedRoles entry needs an id or a name.")
			return
		}
	}
	grp.Name = *body.Name
	if body.ProviderType != nil {
		grp.ProviderType = *body.ProviderType
	}
	t.mu.Lock()
	if i := slices.Index(t.groups.raced, grp.Name); i >= 0 && grp.ProviderType == ProviderCustom {
		t.groups.raced = slices.Delete(t.groups.raced, i, i+1)
		if t.groups.findLocked(grp.Name, grp.ProviderType) == nil {
			t.groups.addLocked(Group{Name: grp.Name, ProviderType: ProviderCustom}, t.now(), "", nil)
		}
	}
	if t.groups.findLocked(grp.Name, grp.ProviderType) != nil {
		t.mu.Unlock()
		groupsError(http.StatusConflict, codeGroupsConflict, "A group with this name already exists.").write(w)
		return
	}
	rec := t.groups.addLocked(grp, t.now(), claims.Subject, body.AssignedRoles)
	doc := t.groupDocLocked(r, *rec)
	t.mu.Unlock()
	writeJSON(w, http.StatusCreated, doc)
}

// Page sizes of GET /api/v1/groups, as for the users API.
const (
	groupsDefaultLimit = 20
	groupsMaxLimit     = 100
)

// handleListGroups answers GET /api/v1/groups: filter (groupsFilter), sort
// (name), limit, next/prev; or, with systemGroups=true and nothing else,
// the system group.
func (t *Tenant) handleListGroups(w http.ResponseWriter, r *http.Request) {
	if _, apiErr := t.authorize(r, scopeAdminClassic); apiErr != nil {
		apiErr.asUsers().write(w)
		return
	}
	q := r.URL.Query()
	if q.Has("systemGroups") {
		switch {
		case len(q) > 1:
			groupsError(http.StatusBadRequest, codeGroupsBad, "systemGroups cannot be combined with other parameters.").write(w)
			return
		case !strings.EqualFold(q.Get("systemGroups"), "true") && !strings.EqualFold(q.Get("systemGroups"), "false"):
			groupsError(http.StatusBadRequest, codeGroupsBad, "systemGroups must be true or false.").write(w)
			return
		case strings.EqualFold(q.Get("systemGroups"), "true"):
			t.mu.Lock()
			doc := t.groupDocLocked(r, groupRecord{Group: everyone})
			t.mu.Unlock()
			writeJSON(w, http.StatusOK, struct {
				Data  []groupDoc `json:"data"`
				Links links      `json:"links"`
			}{[]groupDoc{doc}, pageLinks(r, "", "")})
			return
		}
	}
	filter, err := groupsFilter(q.Get("filter"))
	if err != nil {
		groupsError(http.StatusBadRequest, codeGroupsFilter, "Invalid filter: "+err.Error()+".").write(w)
		return
	}
	field, desc, apiErr := sortSpec(q.Get("sort"), "name")
	if apiErr != nil {
		groupsError(apiErr.status, codeGroupsBad, apiErr.detail).write(w)
		return
	}
	pg, apiErr := readPage(q, groupsDefaultLimit, groupsMaxLimit)
	if apiErr != nil {
		groupsError(apiErr.status, codeGroupsBad, apiErr.detail).write(w)
		return
	}
	t.mu.Lock()
	recs := t.sortedGroupsLocked(filter, field, desc)
	out, next, prev, apiErr := paginate(recs, func(g groupRecord) string { return g.ID }, pg)
	docs := make([]groupDoc, len(out))
	for i, rec := range out {
		docs[i] = t.groupDocLocked(r, rec)
	}
	t.mu.Unlock()
	if apiErr != nil {
		groupsError(apiErr.status, codeGroupsBad, apiErr.detail).write(w)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Data  []groupDoc `json:"data"`
		Links links      `json:"links"`
	}{docs, pageLinks(r, next, prev)})
}

// handleGetGroup answers GET /api/v1/groups/{id}: the group (the system
// group included), or 404.
func (t *Tenant) handleGetGroup(w http.ResponseWriter, r *http.Request) {
	if _, apiErr := t.authorize(r, scopeAdminClassic); apiErr != nil {
		apiErr.asUsers().write(w)
		return
	}
	id := r.PathValue("id")
	t.mu.Lock()
	rec, ok := t.groups.byID[id]
	var doc groupDoc
	switch {
	case ok:
		doc = t.groupDocLocked(r, *rec)
	case id == EveryoneID:
		doc, ok = t.groupDocLocked(r, groupRecord{Group: everyone}), true
	}
	t.mu.Unlock()
	if !ok {
		groupsError(http.StatusNotFound, codeGroupsNotFound, "No group with this id.").write(w)
		return
	}
	writeJSON(w, http.StatusOK, doc)
}
