package qliktest

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// The tenant's error dialect.
//
// Every error is answered as Qlik Cloud answers it (shared/qlik-api.md
// sections 1, 4 and 11):
//
//		{"errors":[{"code":"OAUTH-14","title":"Invalid client_id","detail":"OAuth client is not authorized","status":"400"}],
//		 "traceId":"0000000000000000d3a2403ffa24786d"}
//
//	  - status is a string on /oauth/* and the OAuth clients API (the OAuth
//	    schema types it so), and a number on /api/v1/users* (the users
//	    reference types it so).
//	  - traceId is in the body of every error, a fresh one per answer, in the
//	    shape of the one public real answer (qlik-oss/nebula.js issue 1450):
//	    32 hex digits, the first 16 zero. The contract puts it in the body
//	    only; the fake sends no trace id header.
//	  - Codes are service-prefixed: OAUTH-n on /oauth/*, USERS-n on the users
//	    API, HTTP-<status> for rate limits (HTTP-429, as documented), the
//	    router (404, 405), an injected fault, the OAuth clients API and
//	    bearer-token refusals of the admin APIs.
//
// Qlik publishes no catalogue of codes. The only pinned one is OAUTH-14, a
// 400 "Invalid client_id" / "OAuth client is not authorized" (the public
// report above). Every other number below is this fake's own choice, and
// no client may branch on it: clients decide by HTTP status.
//
//	/oauth/token and /oauth/revoke
//	  400 OAUTH-1   the request is malformed (body, grant_type missing, user_lookup, token missing)
//	  400 OAUTH-2   grant_type is not one the tenant knows
//	  400 OAUTH-3   a requested scope is not in the client's allow-list
//	  400 OAUTH-4   the client may not use this grant type
//	  400 OAUTH-5   impersonation through a client whose consent method is not trusted
//	  401 OAUTH-11  the impersonated user does not exist (UNCONFIRMED reading of section 1)
//	  403 OAUTH-12  the impersonated user is not active (disabled, invited, deleted, provisioned)
//	  400 OAUTH-14  client authentication failed: unknown client_id, wrong or missing secret
//	                (the public report; WithClientAuthFailureStatus(401) serves the
//	                schema's other reading, 401, with the same code)
//	/api/v1/users (status a number)
//	  400 USERS-1   the filter is not in the users grammar (see usersFilter)
//	  400 USERS-2   the body, sort, limit or cursor is invalid
//	  404 USERS-4   no user with this id
//	  409 USERS-9   a user with this subject exists (deleted users included)
//	  401 HTTP-401, 403 HTTP-403 for a missing/invalid bearer or a scope without
//	                admin_classic or admin.users
//	  membership patches: USERS-10 to USERS-13, see membership.go
//	/api/v1/groups (status a number): GROUPS-n, see groups.go
const (
	codeBadRequest       = "OAUTH-1"
	codeUnsupportedGrant = "OAUTH-2"
	codeScope            = "OAUTH-3"
	codeGrantNotAllowed  = "OAUTH-4"
	codeConsent          = "OAUTH-5"
	codeUnknownUser      = "OAUTH-11"
	codeUserNotActive    = "OAUTH-12"
	codeClientAuth       = "OAUTH-14"

	codeUsersFilter   = "USERS-1"
	codeUsersBad      = "USERS-2"
	codeUsersNotFound = "USERS-4"
	codeUsersConflict = "USERS-9"
)

// errorBody is the contract's error shape. Status is a json.RawMessage so
// one type carries both the OAuth string and the users API number.
type errorBody struct {
	Errors  []errorItem `json:"errors"`
	TraceID string      `json:"traceId"`
}

type errorItem struct {
	Code   string          `json:"code"`
	Title  string          `json:"title"`
	Detail string          `json:"detail,omitempty"`
	Status json.RawMessage `json:"status"`
}

// apiError is a refusal in the contract's errors shape. numeric types its
// status as a number (the users API), else as a string.
type apiError struct {
	status              int
	code, title, detail string
	numeric             bool
}

func (e *apiError) write(w http.ResponseWriter) {
	writeErrorBody(w, e.status, e.code, e.title, e.detail, e.numeric)
}

// asUsers is e as the users API answers it: status a number.
func (e *apiError) asUsers() *apiError {
	if e == nil {
		return nil
	}
	c := *e
	c.numeric = true
	return &c
}

// writeError answers status with a string-typed status field, as /oauth/*
// and the OAuth clients API do.
func writeError(w http.ResponseWriter, status int, code, title, detail string) {
	writeErrorBody(w, status, code, title, detail, false)
}

func writeErrorBody(w http.ResponseWriter, status int, code, title, detail string, numeric bool) {
	st := json.RawMessage(strconv.Quote(strconv.Itoa(status)))
	if numeric {
		st = json.RawMessage(strconv.Itoa(status))
	}
	writeJSON(w, status, errorBody{
		Errors:  []errorItem{{Code: code, Title: title, Detail: detail, Status: st}},
		TraceID: newTraceID(),
	})
}

// newTraceID returns a trace id shaped like Qlik's: 16 zeros, 16 hex digits.
func newTraceID() string { return "0000000000000000" + randomHex(8) }

// usersPath reports whether a request path belongs to the users or the
// groups API, whose errors type status as a number (router refusals and
// injected faults included).
func usersPath(path string) bool {
	return path == "/api/v1/users" || strings.HasPrefix(path, "/api/v1/users/") ||
		path == "/api/v1/groups" || strings.HasPrefix(path, "/api/v1/groups/")
}

// oauthError is a refusal of /oauth/*.
func oauthError(status int, code, title, detail string) *apiError {
	return &apiError{status: status, code: code, title: title, detail: detail}
}

// badRequest is a 400 OAUTH-1: the request itself is malformed.
func badRequest(detail string) *apiError {
	return oauthError(http.StatusBadRequest, codeBadRequest, "Bad request.", detail)
}

// errInvalidClient is the answer to a failed client authentication: the
// one real answer on record (see above). WithClientAuthFailureStatus
// changes its status per tenant.
var errInvalidClient = oauthError(http.StatusBadRequest, codeClientAuth, "Invalid client_id", "OAuth client is not authorized")

// WithClientAuthFailureStatus sets the status of a failed client
// authentication at /oauth/token and /oauth/revoke: 400 (the default, as
// the one public real answer has it) or 401 (the OAuth schema's "invalid
// client credentials"). Other values are ignored. Clients must handle
// both, since the contract leaves it open.
func WithClientAuthFailureStatus(status int) Option {
	return func(t *Tenant) {
		if status == http.StatusBadRequest || status == http.StatusUnauthorized {
			t.clientAuthStatus = status
		}
	}
}

// invalidClient is errInvalidClient with this tenant's status.
func (t *Tenant) invalidClient() *apiError {
	if t.clientAuthStatus == 0 || t.clientAuthStatus == errInvalidClient.status {
		return errInvalidClient
	}
	e := *errInvalidClient
	e.status = t.clientAuthStatus
	return &e
}

// usersError is a refusal of the users API, status a number.
func usersError(status int, code, detail string) *apiError {
	title := http.StatusText(status)
	if title == "" {
		title = "Error"
	}
	return &apiError{status: status, code: code, title: title + ".", detail: detail, numeric: true}
}
