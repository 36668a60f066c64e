package qliktest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
)

// User membership patches: PATCH /api/v1/users/{id} with a JSON Patch
// array (shared/qlik-api.md section 9), a Tier-2 write for tokens with
// admin_classic or admin.users, like the rest of the users API. Supported:
//
//	add           /assignedGroups/- (the guide's spelling) or /assignedGroups (the reference's enum)
//	remove-value  /assignedGroups
//	replace       /assignedGroups   (the user's whole list of groups)
//	replace       /name, /status    (active or disabled)
//
// A group value is a group id string, {"id":"…"}, {"name":"…","providerType":"custom"|"idp"},
// or, for add and remove-value, an array of these. Other ops and paths are
// refused (400 USERS-2): the fake models memberships, not the whole users API.
//
// The ops run in order; when one cannot be applied, nothing is, and the
// answer is 400 listing every failing op (status a number, traceId), each
// error with source.pointer "/<op index>/value":
//
//	400 USERS-2   the body is not a JSON Patch array, or an op is malformed or not supported
//	404 USERS-4   no user with this id
//	400 USERS-10  the op names a group that does not exist: the fake's choice of 400 over 404
//	              (the reference lists 404 for the patch, the user being the resource; a
//	              client must not depend on either)
//	400 USERS-11  the op touches an IdP or system group membership (section 9), or replaces
//	              the groups of a user who has IdP groups
//	400 USERS-12  add of a group the user has (section 9), or remove-value of one the user
//	              does not have (the fake's choice, symmetric and UNCONFIRMED)
//
// Success is 204. 207 (partial success) with the reference's Errors body
// is answered only when FailUserPatches asked for it: the ops it names fail
// and are listed, each error with code USERS-13, status 500 and
// source.pointer "/<op index>/value" (the reference's Error has a source
// pointer; that it points into the patch document is the fake's reading),
// and every other op is applied.
const (
	codeUsersNoGroup    = "USERS-10"
	codeUsersIdPGroup   = "USERS-11"
	codeUsersMembership = "USERS-12"
	codeUsersPartial    = "USERS-13"
)

// UserPatch is one PATCH /api/v1/users/{id} that reached the handler (past
// authentication, the quota and injected faults), as UserPatches records it.
type UserPatch struct {
	UserID string
	Ops    []PatchOp // empty when the body was not a JSON Patch array
	Status int       // the answer: 204, 207, 400 or 404
}

// PatchOp is one op of a recorded user patch.
type PatchOp struct {
	Op, Path string
	Value    string // a JSON string's value as is; any other JSON value as its text
}

// partialRule is a FailUserPatches request: the group ids or names whose
// ops fail; empty means every group op.
type partialRule struct {
	groups []string
}

func (p partialRule) matches(g Group) bool {
	return len(p.groups) == 0 || slices.Contains(p.groups, g.ID) || slices.Contains(p.groups, g.Name)
}

// FailUserPatches makes the next n user patches that hold an op on one of
// groups (each a group id or an exact group name; none means any group)
// answer 207: those ops fail, and every other op is applied. A patch that
// the tenant refuses anyway (400, 404) or that holds no such op is answered
// as usual and does not use up one of the n. Calls add up.
func (t *Tenant) FailUserPatches(n int, groups ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for range max(n, 0) {
		t.groups.partial = append(t.groups.partial, partialRule{groups: slices.Clone(groups)})
	}
}

// UserPatches returns the user patches the tenant answered, oldest first.
// ResetCounters empties it.
func (t *Tenant) UserPatches() []UserPatch {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]UserPatch, len(t.groups.patches))
	for i, p := range t.groups.patches {
		out[i] = p
		out[i].Ops = slices.Clone(p.Ops)
	}
	return out
}

// assignedGroup is an entry of a user's assignedGroups on the wire.
type assignedGroup struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	ProviderType  string    `json:"providerType,omitempty"`
	AssignedRoles []roleRef `json:"assignedRoles"`
}

// userDoc is a user as GET /api/v1/users/{id} answers it. A user in no
// group has no assignedGroups (the schema has it optional).
type userDoc struct {
	User
	AssignedGroups []assignedGroup `json:"assignedGroups,omitempty"`
}

// userDocLocked is u with its groups in assignment order.
func (t *Tenant) userDocLocked(u User) userDoc {
	d := userDoc{User: u}
	for _, id := range t.groups.members[u.ID] {
		if rec, ok := t.groups.byID[id]; ok {
			roles := rec.roles
			if roles == nil {
				roles = []roleRef{}
			}
			d.AssignedGroups = append(d.AssignedGroups, assignedGroup{ID: rec.ID, Name: rec.Name, ProviderType: rec.ProviderType, AssignedRoles: roles})
		}
	}
	return d
}

// jsonPatchOp is an op on the wire.
type jsonPatchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value"`
}

// opError is one op that could not be applied.
type opError struct {
	Code   string `json:"code"`
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
	Status int    `json:"status"`
	Source struct {
		Pointer string `json:"pointer"`
	} `json:"source"`
}

func newOpError(i, status int, code, detail string) opError {
	e := opError{Code: code, Title: http.StatusText(status) + ".", Detail: detail, Status: status}
	e.Source.Pointer = fmt.Sprintf("/%d/value", i)
	return e
}

// handlePatchUser answers PATCH /api/v1/users/{id}.
func (t *Tenant) handlePatchUser(w http.ResponseWriter, r *http.Request) {
	if _, apiErr := t.authorize(r, scopeAdminClassic, scopeAdminUsers); apiErr != nil {
		apiErr.asUsers().write(w)
		return
	}
	userID := r.PathValue("id")
	var ops []jsonPatchOp
	apiErr := decodeJSON(r, &ops, "application/json", "application/json-patch+json")
	if apiErr == nil && ops == nil {
		apiErr = adminError(http.StatusBadRequest, "The body must be a JSON Patch array.")
	}
	logged := make([]PatchOp, len(ops))
	for i, op := range ops {
		logged[i] = PatchOp{Op: op.Op, Path: op.Path, Value: string(op.Value)}
		var s string
		if json.Unmarshal(op.Value, &s) == nil {
			logged[i].Value = s
		}
	}

	t.mu.Lock()
	status, errs, refusal := t.patchUserLocked(userID, ops, apiErr)
	t.groups.patches = append(t.groups.patches, UserPatch{UserID: userID, Ops: logged, Status: status})
	t.mu.Unlock()
	switch {
	case refusal != nil:
		refusal.write(w)
	case len(errs) > 0:
		writeOpErrors(w, status, errs)
	default:
		w.WriteHeader(status)
	}
}

// patchUserLocked applies ops to user userID, or nothing, and returns the
// answer's status with the failed ops (400, 207) or a refusal (400, 404).
// bodyErr is the body's refusal, if any.
func (t *Tenant) patchUserLocked(userID string, ops []jsonPatchOp, bodyErr *apiError) (int, []opError, *apiError) {
	u, ok := t.users[userID]
	switch {
	case bodyErr != nil:
		return bodyErr.status, nil, usersError(bodyErr.status, codeUsersBad, bodyErr.detail)
	case !ok:
		return http.StatusNotFound, nil, usersError(http.StatusNotFound, codeUsersNotFound, "No user with this id.")
	}
	t.groups.initLocked()
	res := t.applyOpsLocked(u, ops, nil)
	if len(res.failed) > 0 {
		return http.StatusBadRequest, res.failed, nil
	}
	status := http.StatusNoContent
	if len(t.groups.partial) > 0 {
		rule := t.groups.partial[0]
		if forced := t.applyOpsLocked(u, ops, rule.matches); len(forced.failed) > 0 {
			t.groups.partial = t.groups.partial[1:]
			res, status = forced, http.StatusMultiStatus
		}
	}
	t.groups.members[u.ID] = res.groups
	if res.name != nil {
		u.Name = *res.name
	}
	if res.status != nil {
		u.Status = *res.status
	}
	return status, res.failed, nil
}

func writeOpErrors(w http.ResponseWriter, status int, errs []opError) {
	writeJSON(w, status, struct {
		Errors  []opError `json:"errors"`
		TraceID string    `json:"traceId"`
	}{errs, newTraceID()})
}

// patchResult is a user's state after a patch.
type patchResult struct {
	groups       []string
	name, status *string
	failed       []opError // ops not applied
}

// applyOpsLocked runs ops in order on a copy of u's state. An op that
// fails is recorded and skipped; with fail set, a group op on a group it
// matches (that would otherwise succeed) fails too.
func (t *Tenant) applyOpsLocked(u *User, ops []jsonPatchOp, fail func(Group) bool) patchResult {
	res := patchResult{groups: slices.Clone(t.groups.members[u.ID])}
	for i, op := range ops {
		if e, ok := t.applyOpLocked(&res, i, op, fail); !ok {
			res.failed = append(res.failed, e)
		}
	}
	return res
}

func (t *Tenant) applyOpLocked(res *patchResult, i int, op jsonPatchOp, fail func(Group) bool) (opError, bool) {
	bad := func(detail string) (opError, bool) {
		return newOpError(i, http.StatusBadRequest, codeUsersBad, detail), false
	}
	switch {
	case op.Op == "replace" && (op.Path == "/name" || op.Path == "/status"):
		var s string
		if json.Unmarshal(op.Value, &s) != nil {
			return bad(op.Path + " takes a string.")
		}
		if op.Path == "/name" {
			res.name = &s
			return opError{}, true
		}
		if s != StatusActive && s != StatusDisabled {
			return bad("status must be active or disabled.")
		}
		res.status = &s
		return opError{}, true
	case op.Op == "add" && (op.Path == "/assignedGroups/-" || op.Path == "/assignedGroups"),
		op.Op == "remove-value" && op.Path == "/assignedGroups",
		op.Op == "replace" && op.Path == "/assignedGroups":
	default:
		return bad(fmt.Sprintf("op %q on path %q is not supported.", op.Op, op.Path))
	}

	refs, isList, err := groupRefs(op.Value)
	switch {
	case err != nil:
		return bad(err.Error())
	case op.Op == "replace" && !isList:
		return bad("replace of /assignedGroups takes an array of groups.")
	}
	groups := make([]Group, 0, len(refs))
	for _, ref := range refs {
		g, e, ok := t.resolveGroupLocked(i, ref)
		if !ok {
			return e, false
		}
		groups = append(groups, g)
	}
	if op.Op == "replace" {
		for _, id := range res.groups {
			if rec := t.groups.byID[id]; rec != nil && rec.ProviderType == ProviderIdP {
				return newOpError(i, http.StatusBadRequest, codeUsersIdPGroup, "The user has IdP groups, which a replace would touch."), false
			}
		}
	}
	next := slices.Clone(res.groups)
	if op.Op == "replace" {
		next = next[:0]
	}
	for _, g := range groups {
		has := slices.Contains(next, g.ID)
		switch {
		case g.ProviderType != ProviderCustom:
			return newOpError(i, http.StatusBadRequest, codeUsersIdPGroup, "IdP and system group memberships cannot be changed: group "+g.ID+"."), false
		case op.Op == "add" && has:
			return newOpError(i, http.StatusBadRequest, codeUsersMembership, "The user is already in group "+g.ID+"."), false
		case op.Op == "remove-value" && !has:
			return newOpError(i, http.StatusBadRequest, codeUsersMembership, "The user is not in group "+g.ID+"."), false
		case fail != nil && fail(g):
			return newOpError(i, http.StatusInternalServerError, codeUsersPartial, "The membership of group "+g.ID+" could not be changed."), false
		case op.Op == "remove-value":
			next = slices.DeleteFunc(next, func(id string) bool { return id == g.ID })
		case !has: // add, replace
			next = append(next, g.ID)
		}
	}
	res.groups = next
	return opError{}, true
}

// groupRef is one group named in an op's value.
type groupRef struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	ProviderType string `json:"providerType"`
}

// groupRefs reads an op's value: one group (an id string or an object) or
// an array of them.
func groupRefs(raw json.RawMessage) (refs []groupRef, isList bool, err error) {
	one := func(raw json.RawMessage) (groupRef, error) {
		var id string
		if json.Unmarshal(raw, &id) == nil {
			return groupRef{ID: id}, nil
		}
		var ref groupRef
		if err := json.Unmarshal(raw, &ref); err != nil || raw[0] != '{' {
			return groupRef{}, fmt.Errorf("a group is an id string or an object")
		}
		var keys map[string]json.RawMessage
		_ = json.Unmarshal(raw, &keys)
		for k := range keys {
			if k != "id" && k != "name" && k != "providerType" {
				return groupRef{}, fmt.Errorf("a group object has no field %q", k)
			}
		}
		if (ref.ID == "") == (ref.Name == "") || (ref.Name != "" && ref.ProviderType == "") {
			return groupRef{}, fmt.Errorf("a group object has an id, or a name and a providerType")
		}
		return ref, nil
	}
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false, fmt.Errorf("value is required")
	}
	if raw[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, true, fmt.Errorf("value is not a valid array")
		}
		for _, it := range items {
			ref, err := one(it)
			if err != nil {
				return nil, true, err
			}
			refs = append(refs, ref)
		}
		return refs, true, nil
	}
	ref, err := one(raw)
	if err != nil {
		return nil, false, err
	}
	return []groupRef{ref}, false, nil
}

// resolveGroupLocked finds the group ref names: the system group, or a
// stored group by id or by name and provider type; 400 USERS-10 when there
// is none.
func (t *Tenant) resolveGroupLocked(i int, ref groupRef) (Group, opError, bool) {
	if ref.ID == EveryoneID {
		return everyone, opError{}, true
	}
	if ref.ID != "" {
		if rec, ok := t.groups.byID[ref.ID]; ok {
			return rec.Group, opError{}, true
		}
		return Group{}, newOpError(i, http.StatusBadRequest, codeUsersNoGroup, "No group with id "+ref.ID+"."), false
	}
	if rec := t.groups.findLocked(ref.Name, ref.ProviderType); rec != nil {
		return rec.Group, opError{}, true
	}
	return Group{}, newOpError(i, http.StatusBadRequest, codeUsersNoGroup, "No "+ref.ProviderType+" group with this name."), false
}
