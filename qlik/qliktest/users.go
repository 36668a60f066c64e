package qliktest

import (
	"cmp"
	"encoding/json"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// User statuses: the reference's five. Only active users can be
// impersonated or have their tokens honoured.
const (
	StatusActive      = "active"
	StatusDisabled    = "disabled"
	StatusInvited     = "invited"
	StatusDeleted     = "deleted"
	StatusProvisioned = "provisioned"
	statusInvited     = StatusInvited
)

// User is a tenant user.
type User struct {
	ID      string `json:"id"` // generated (24 hex digits, like 6422bad8022070c06d2417bc) when empty
	Subject string `json:"subject"`
	Email   string `json:"email"`
	Name    string `json:"name"`
	Status  string `json:"status"` // StatusActive (the default) or another of the five statuses
}

// AddUser stores u, generating its ID when empty and defaulting Status to
// active, and returns it. A user with the same ID is replaced; a later user
// with the same Subject wins subject lookups.
func (t *Tenant) AddUser(u User) User {
	if u.ID == "" {
		u.ID = randomHex(12)
	}
	if u.Status == "" {
		u.Status = StatusActive
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.putUserLocked(u)
	return u
}

func (t *Tenant) putUserLocked(u User) {
	if old, ok := t.users[u.ID]; ok && t.subjects[old.Subject] == u.ID {
		delete(t.subjects, old.Subject)
	}
	if _, ok := t.userSeq[u.ID]; !ok {
		t.seq++
		t.userSeq[u.ID] = t.seq
	}
	t.users[u.ID] = &u
	if u.Subject != "" {
		t.subjects[u.Subject] = u.ID
	}
}

// SetUserStatus sets the status of user id (one of the five statuses).
// Unknown users are ignored.
func (t *Tenant) SetUserStatus(id, status string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if u, ok := t.users[id]; ok {
		u.Status = status
	}
}

// lookupUserLocked resolves a user_lookup; field is already validated.
func (t *Tenant) lookupUserLocked(field, value string) (*User, bool) {
	id := value
	if field == lookupSubject {
		var ok bool
		if id, ok = t.subjects[value]; !ok {
			return nil, false
		}
	}
	u, ok := t.users[id]
	return u, ok
}

// botUserLocked returns the bot user of a client, creating it on first use
// as Qlik does for client_credentials.
func (t *Tenant) botUserLocked(clientID string) *User {
	subject := `qlikbot\` + clientID
	if id, ok := t.subjects[subject]; ok {
		if u, ok := t.users[id]; ok {
			return u
		}
	}
	t.putUserLocked(User{ID: randomHex(12), Subject: subject, Name: subject, Status: StatusActive})
	return t.users[t.subjects[subject]]
}

// bearerUser returns the user the request's bearer token acts for, or
// answers 401 with the errors body (status a number when numeric, as the
// users API types it) and returns false.
func (t *Tenant) bearerUser(w http.ResponseWriter, r *http.Request, numeric bool) (User, bool) {
	token, ok := bearerToken(r)
	if !ok {
		writeErrorBody(w, http.StatusUnauthorized, "HTTP-401", "Unauthorized.", "A bearer token is required.", numeric)
		return User{}, false
	}
	u, err := t.TokenUser(token)
	if err != nil {
		writeErrorBody(w, http.StatusUnauthorized, "HTTP-401", "Unauthorized.", "The access token is invalid, expired or revoked.", numeric)
		return User{}, false
	}
	return u, true
}

// handleUsersMe answers GET /api/v1/users/me as documented: a 301 to the
// user the bearer token acts for. Any valid token will do: no admin scope
// is needed. The Location is the bare user id, a relative reference that
// resolves to /api/v1/users/{id} against this path, and to the same place
// behind a proxy that serves the API under a prefix (the reference gives no
// target: this is the fake's choice).
func (t *Tenant) handleUsersMe(w http.ResponseWriter, r *http.Request) {
	u, ok := t.bearerUser(w, r, true)
	if !ok {
		return
	}
	w.Header().Set("Location", url.PathEscape(u.ID))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusMovedPermanently)
}

// handleGetUser answers GET /api/v1/users/{id} to any valid bearer token:
// the user with its assignedGroups, or 404.
func (t *Tenant) handleGetUser(w http.ResponseWriter, r *http.Request) {
	if _, ok := t.bearerUser(w, r, true); !ok {
		return
	}
	t.mu.Lock()
	u, ok := t.users[r.PathValue("id")]
	var found userDoc
	if ok {
		found = t.userDocLocked(*u) // with assignedGroups (membership.go)
	}
	t.mu.Unlock()
	if !ok {
		usersError(http.StatusNotFound, codeUsersNotFound, "No user with this id.").write(w)
		return
	}
	writeJSON(w, http.StatusOK, found)
}

// Page sizes of GET /api/v1/users.
const (
	usersDefaultLimit = 20
	usersMaxLimit     = 100
)

// handleListUsers answers GET /api/v1/users: filter (the users grammar,
// usersFilter, on id, subject, email, name, status), sort, limit,
// next/prev. Errors type status as a number.
func (t *Tenant) handleListUsers(w http.ResponseWriter, r *http.Request) {
	if _, apiErr := t.authorize(r, scopeAdminClassic, scopeAdminUsers); apiErr != nil {
		apiErr.asUsers().write(w)
		return
	}
	q := r.URL.Query()
	filter, err := usersFilter(q.Get("filter"))
	if err != nil {
		usersError(http.StatusBadRequest, codeUsersFilter, "Invalid filter: "+err.Error()+".").write(w)
		return
	}
	field, desc, apiErr := sortSpec(q.Get("sort"), "id", "_id", "name", "email", "subject", "status", "createdAt")
	if apiErr != nil {
		usersError(apiErr.status, codeUsersBad, apiErr.detail).write(w)
		return
	}
	pg, apiErr := readPage(q, usersDefaultLimit, usersMaxLimit)
	if apiErr != nil {
		usersError(apiErr.status, codeUsersBad, apiErr.detail).write(w)
		return
	}

	t.mu.Lock()
	users := make([]User, 0, len(t.users))
	for _, u := range t.users {
		if filter == nil || filter.match(u.attr) {
			users = append(users, *u)
		}
	}
	seq := maps.Clone(t.userSeq)
	t.mu.Unlock()

	key := func(u User) string {
		switch field {
		case "name":
			return strings.ToLower(u.Name)
		case "email":
			return strings.ToLower(u.Email)
		case "subject":
			return u.Subject
		case "status":
			return u.Status
		case "id", "_id":
			return u.ID
		}
		return "" // createdAt and the default: creation order alone
	}
	slices.SortFunc(users, func(a, b User) int {
		c := cmp.Or(strings.Compare(key(a), key(b)), cmp.Compare(seq[a.ID], seq[b.ID]))
		if desc {
			return -c
		}
		return c
	})
	out, next, prev, apiErr := paginate(users, func(u User) string { return u.ID }, pg)
	if apiErr != nil {
		usersError(apiErr.status, codeUsersBad, apiErr.detail).write(w)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Data  []User `json:"data"`
		Links links  `json:"links"`
	}{out, pageLinks(r, next, prev)})
}

func (u *User) attr(name string) string {
	switch name {
	case "id":
		return u.ID
	case "subject":
		return u.Subject
	case "email":
		return u.Email
	case "name":
		return u.Name
	case "status":
		return u.Status
	}
	return ""
}

// handleCreateUser answers POST /api/v1/users: subject required and unique
// among all users, deleted ones included (409 otherwise), status active (the
// default), invited or disabled; 201 with the user. Errors type status as a
// number.
func (t *Tenant) handleCreateUser(w http.ResponseWriter, r *http.Request) {
	if _, apiErr := t.authorize(r, scopeAdminClassic, scopeAdminUsers); apiErr != nil {
		apiErr.asUsers().write(w)
		return
	}
	var body struct {
		Name     string          `json:"name"`
		Email    string          `json:"email"`
		Subject  string          `json:"subject"`
		Status   string          `json:"status"`
		Picture  string          `json:"picture"`
		TenantID string          `json:"tenantId"`
		Roles    json.RawMessage `json:"assignedRoles"`
	}
	if apiErr := decodeJSON(r, &body, "application/json"); apiErr != nil {
		usersError(apiErr.status, codeUsersBad, apiErr.detail).write(w)
		return
	}
	switch body.Status {
	case "":
		body.Status = StatusActive
	case StatusActive, StatusDisabled, statusInvited:
	default:
		usersError(http.StatusBadRequest, codeUsersBad, "status must be active, invited or disabled.").write(w)
		return
	}
	if strings.TrimSpace(body.Subject) == "" {
		usersError(http.StatusBadRequest, codeUsersBad, "subject is required.").write(w)
		return
	}
	u := User{ID: randomHex(12), Subject: body.Subject, Email: body.Email, Name: body.Name, Status: body.Status}
	t.mu.Lock()
	_, taken := t.subjects[body.Subject]
	if !taken {
		t.putUserLocked(u)
	}
	t.mu.Unlock()
	if taken {
		usersError(http.StatusConflict, codeUsersConflict, "A user with this subject already exists.").write(w)
		return
	}
	writeJSON(w, http.StatusCreated, u)
}
