package qlik

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Groups and user memberships (shared/qlik-api.md section 9): custom groups
// are created and found through /api/v1/groups, and a user's memberships
// are read from GET /api/v1/users/{id} and changed with a JSON Patch of
// /api/v1/users/{id}. The tenant answers errors of both APIs with status as
// a number and a traceId; POST /groups and PATCH /users are Tier 2.

// Group provider types. System groups (com.qlik.Everyone) have none.
const (
	ProviderCustom = "custom"
	ProviderIdP    = "idp"
)

// MaxGroupName is the longest group name the tenant accepts, in characters.
const MaxGroupName = 256

// endpointGroups names the groups API in *Error.Endpoint. Membership
// patches and user reads are the users API: "users".
const endpointGroups = "groups"

// groupsPageSize is the limit asked of /api/v1/groups.
const groupsPageSize = 100

var (
	// ErrGroupExists means CreateCustomGroup was answered 409: a custom
	// group with this name exists (someone else created it). The *Error
	// stays reachable with errors.As.
	ErrGroupExists = errors.New("qlik: group exists")

	// ErrGroupNotFound means FindCustomGroup found no custom group with
	// exactly this name.
	ErrGroupNotFound = errors.New("qlik: group not found")
)

// Group is a Qlik group as the groups and users APIs return it.
type Group struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	ProviderType string `json:"providerType"` // ProviderCustom, ProviderIdP, or "" for system groups
	Status       string `json:"status,omitempty"`
}

// CreateCustomGroup creates the custom group name:
// POST /api/v1/groups {"name", "providerType":"custom", "status":"active"},
// 201 with the group. A name taken by another custom group is a 409,
// returned as an error that is both ErrGroupExists and the *Error. An IdP
// group of the same name does not conflict. The name must be 1 to
// MaxGroupName characters.
func (a *Admin) CreateCustomGroup(ctx context.Context, name string) (Group, error) {
	if err := checkGroupName(name); err != nil {
		return Group{}, err
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return Group{}, err
	}
	_, body, err := a.c.send(ctx, request{
		endpoint: endpointGroups, method: http.MethodPost, url: a.c.base + "/api/v1/groups", bearer: bearer,
		body: struct {
			Name         string `json:"name"`
			ProviderType string `json:"providerType"`
			Status       string `json:"status"`
		}{name, ProviderCustom, "active"},
	})
	var qe *Error
	if errors.As(err, &qe) && qe.StatusCode == http.StatusConflict {
		return Group{}, fmt.Errorf("%w: %w", ErrGroupExists, err)
	}
	if err != nil {
		return Group{}, err
	}
	var g Group
	if json.Unmarshal(body, &g) != nil {
		return Group{}, malformed(endpointGroups, "body is not a group JSON object")
	}
	switch g.ProviderType {
	case "":
		g.ProviderType = ProviderCustom // what was asked; the schema has it optional
	case ProviderCustom:
	default:
		return Group{}, malformed(endpointGroups, "created group is not a custom group")
	}
	if g.ID == "" {
		return Group{}, malformed(endpointGroups, "group has no id")
	}
	return g, nil
}

// FindCustomGroup returns the custom group named exactly name (names are
// case-sensitive): GET /api/v1/groups?filter=name eq "…" and providerType
// eq "custom", following links.next like FindUsers. The tenant compares
// filter values case-insensitively, so the answer may hold groups whose
// names differ in case: they are left out here. None left:
// ErrGroupNotFound.
func (a *Admin) FindCustomGroup(ctx context.Context, name string) (Group, error) {
	if err := checkGroupName(name); err != nil {
		return Group{}, err
	}
	q := url.Values{
		"filter": {"name eq " + QuoteFilterValue(name) + ` and providerType eq "` + ProviderCustom + `"`},
		"limit":  {strconv.Itoa(groupsPageSize)},
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return Group{}, err
	}
	groups, err := listAll[Group](ctx, a.c, endpointGroups, bearer, "/api/v1/groups", q)
	if err != nil {
		return Group{}, err
	}
	var untyped *Group
	for i, g := range groups {
		if g.ID == "" {
			return Group{}, malformed(endpointGroups, "a group has no id")
		}
		// Custom names are unique, so at most one matches; should a tenant
		// answer two, the first is as good as the other.
		switch {
		case g.Name != name:
		case g.ProviderType == ProviderCustom:
			return g, nil
		case g.ProviderType == "" && untyped == nil:
			untyped = &groups[i]
		}
	}
	if untyped != nil {
		// The schema has providerType optional, and the filter asked for
		// custom groups: one without it is taken as custom, after any that
		// says so, rather than create it again and meet a 409 forever.
		g := *untyped
		g.ProviderType = ProviderCustom
		return g, nil
	}
	return Group{}, ErrGroupNotFound
}

// UserGroups returns the groups user userID is in, of every kind (custom,
// IdP, system), from GET /api/v1/users/{id} (assignedGroups). An unknown
// user is a 404 *Error that is also ErrUserNotFound.
func (a *Admin) UserGroups(ctx context.Context, userID string) ([]Group, error) {
	if err := checkID("user id", userID); err != nil {
		return nil, err
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return nil, err
	}
	var u struct {
		ID             string  `json:"id"`
		AssignedGroups []Group `json:"assignedGroups"`
	}
	err = a.c.getJSON(ctx, endpointUsers, bearer, a.c.base+"/api/v1/users/"+url.PathEscape(userID), &u)
	if err != nil {
		return nil, userNotFound(err)
	}
	if u.ID == "" {
		return nil, malformed(endpointUsers, "user has no id")
	}
	groups := make([]Group, 0, len(u.AssignedGroups))
	for _, g := range u.AssignedGroups {
		if g.ID == "" {
			return nil, malformed(endpointUsers, "an assigned group has no id")
		}
		groups = append(groups, g)
	}
	return groups, nil
}

// PatchUserGroups changes user userID's memberships in one
// PATCH /api/v1/users/{id}: {"op":"add","path":"/assignedGroups/-","value":id}
// for each id in add, then {"op":"remove-value","path":"/assignedGroups","value":id}
// for each id in remove. Nothing to do sends nothing. It returns nil on
// 204 (or another 2xx but 207); a *PartialPatchError on 207, when some ops
// were applied and others not; and the *Error otherwise. A 400 means that
// nothing was applied: an add of a group the user has, an op on an IdP or
// system group, an unknown group. A 404 is an unknown user, or on some
// tenants an unknown group: it is left as the *Error, not ErrUserNotFound,
// since which one is not documented. Ids must be non-empty and appear once
// across add and remove.
func (a *Admin) PatchUserGroups(ctx context.Context, userID string, add, remove []string) error {
	if err := checkID("user id", userID); err != nil {
		return err
	}
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value string `json:"value"`
	}
	ops := make([]op, 0, len(add)+len(remove))
	for _, id := range add {
		ops = append(ops, op{"add", "/assignedGroups/-", id})
	}
	for _, id := range remove {
		ops = append(ops, op{"remove-value", "/assignedGroups", id})
	}
	ids := make([]string, len(ops))
	for i, o := range ops {
		switch {
		case o.Value == "":
			return fmt.Errorf("%w: group id is empty", ErrInvalidRequest)
		case slices.Contains(ids[:i], o.Value):
			return fmt.Errorf("%w: group id appears twice", ErrInvalidRequest)
		}
		ids[i] = o.Value
	}
	if len(ops) == 0 {
		return nil
	}
	bearer, err := a.bearer(ctx)
	if err != nil {
		return err
	}
	status, body, err := a.c.send(ctx, request{
		endpoint: endpointUsers, method: http.MethodPatch, url: a.c.base + "/api/v1/users/" + url.PathEscape(userID),
		bearer: bearer, body: ops,
	})
	if err != nil {
		return err
	}
	if status == http.StatusMultiStatus {
		return parsePartial(body, ids)
	}
	return nil
}

// PartialPatchError is a 207 answer to PatchUserGroups: some ops were
// applied and others not. Failed lists the group ids of the ops the body
// names as failed, in the order they were sent; Unknown is true when the
// body did not say which ops failed, or named some that cannot be matched
// to one, so Failed may be incomplete (read the user's groups again).
type PartialPatchError struct {
	Failed  []string
	Unknown bool
	TraceID string
}

// Error says how many ops failed, without group ids or names.
func (e *PartialPatchError) Error() string {
	var b strings.Builder
	b.WriteString("qlik: users: 207 partial membership patch: ")
	if e.Unknown {
		b.WriteString("failed ops not all known")
		if len(e.Failed) > 0 {
			fmt.Fprintf(&b, " (%d identified)", len(e.Failed))
		}
	} else {
		fmt.Fprintf(&b, "%d ops failed", len(e.Failed))
	}
	if e.TraceID != "" {
		b.WriteString(" traceId=")
		b.WriteString(quoteIfOdd(truncate(e.TraceID, 64)))
	}
	return b.String()
}

// parsePartial reads a 207 body, the reference's Errors object
// ({"errors":[{code,title,detail,status,source:{pointer},meta}],"traceId"}),
// whose items do not say in a documented way which op they are about. An
// item is matched to the op it names, by the first of: source.pointer
// "/<op index>" (alone or followed by "/value" or another member), one sent
// id appearing in meta, one sent id appearing in detail or title. An item
// that matches nothing, no items at all, or a body that is not such an
// object make the answer Unknown.
func parsePartial(body []byte, ids []string) *PartialPatchError {
	e := &PartialPatchError{}
	var eb struct {
		Errors []struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
			Source struct {
				Pointer string `json:"pointer"`
			} `json:"source"`
			Meta json.RawMessage `json:"meta"`
		} `json:"errors"`
		TraceID json.RawMessage `json:"traceId"`
	}
	if json.Unmarshal(body, &eb) != nil {
		e.Unknown = true
		return e
	}
	e.TraceID = truncate(scalar(eb.TraceID), 128)
	failed := make([]bool, len(ids))
	for _, item := range eb.Errors {
		i := opIndex(item.Source.Pointer, len(ids))
		if i < 0 {
			i = onlyMention(string(item.Meta), ids, true)
		}
		if i < 0 {
			i = onlyMention(item.Detail+"\n"+item.Title, ids, false)
		}
		if i < 0 {
			e.Unknown = true
			continue
		}
		failed[i] = true
	}
	if len(eb.Errors) == 0 {
		e.Unknown = true
	}
	for i, f := range failed {
		if f {
			e.Failed = append(e.Failed, ids[i])
		}
	}
	return e
}

// opIndex reads a JSON Pointer "/<n>" or "/<n>/..." into the patch array;
// -1 when it is not one or n is out of range.
func opIndex(pointer string, n int) int {
	rest, ok := strings.CutPrefix(pointer, "/")
	if !ok {
		return -1
	}
	digits, _, _ := strings.Cut(rest, "/")
	if !isDigits(digits) || len(digits) > 6 {
		return -1
	}
	i, _ := strconv.Atoi(digits)
	if i >= n {
		return -1
	}
	return i
}

// onlyMention returns the index of the one id that s mentions (as a JSON
// string when quoted), or -1 when it mentions none or several.
func onlyMention(s string, ids []string, quoted bool) int {
	found := -1
	for i, id := range ids {
		needle := id
		if quoted {
			needle = strconv.Quote(id)
		}
		if strings.Contains(s, needle) {
			if found >= 0 {
				return -1
			}
			found = i
		}
	}
	return found
}

// userNotFound marks a 404 from /api/v1/users/{id} as ErrUserNotFound,
// keeping the *Error reachable.
func userNotFound(err error) error {
	var qe *Error
	if errors.As(err, &qe) && qe.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %w", ErrUserNotFound, err)
	}
	return err
}

func checkGroupName(name string) error {
	switch {
	case strings.TrimSpace(name) == "":
		return fmt.Errorf("%w: group name is empty", ErrInvalidRequest)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: group name is not valid UTF-8", ErrInvalidRequest)
	case utf8.RuneCountInString(name) > MaxGroupName:
		return fmt.Errorf("%w: group name is longer than %d characters", ErrInvalidRequest, MaxGroupName)
	}
	return nil
}
