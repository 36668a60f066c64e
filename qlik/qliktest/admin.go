package qliktest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// adminError is a refusal of an admin API, coded "HTTP-<status>".
func adminError(status int, detail string) *apiError {
	title := http.StatusText(status)
	if title == "" {
		title = "Error"
	}
	return &apiError{status: status, code: "HTTP-" + strconv.Itoa(status), title: title + ".", detail: detail}
}

// bearerToken returns the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	return token, strings.EqualFold(scheme, "bearer") && token != ""
}

// authorize checks the bearer token of an admin API call: 401 when it is
// missing or TokenUser would refuse it, 403 when its scope holds none of
// scopes. It returns the claims of an accepted token.
func (t *Tenant) authorize(r *http.Request, scopes ...string) (*accessClaims, *apiError) {
	token, ok := bearerToken(r)
	if !ok {
		return nil, adminError(http.StatusUnauthorized, "A bearer token is required.")
	}
	c, _, err := t.verify(token)
	if err != nil {
		return nil, adminError(http.StatusUnauthorized, "The access token is invalid, expired or revoked.")
	}
	granted := strings.Fields(c.Scope)
	for _, s := range scopes {
		if slices.Contains(granted, s) {
			return c, nil
		}
	}
	return nil, adminError(http.StatusForbidden, "The access token lacks the scope "+strings.Join(scopes, " or ")+".")
}

// decodeJSON decodes the request body into v, refusing other media types,
// unknown fields (matched case-sensitively, unlike encoding/json) and
// trailing data, so a client that misspells a field learns it here rather
// than in production.
func decodeJSON(r *http.Request, v any, mediaTypes ...string) *apiError {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if !slices.Contains(mediaTypes, mt) {
		return adminError(http.StatusBadRequest, "Content-Type must be "+strings.Join(mediaTypes, " or ")+".")
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return adminError(http.StatusBadRequest, "The request body could not be read.")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return adminError(http.StatusBadRequest, "The request body is not valid: "+jsonReason(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return adminError(http.StatusBadRequest, "The request body has data after the JSON value.")
	}
	var generic any
	_ = json.Unmarshal(body, &generic) // valid: decoded above
	if name, ok := unknownKey(generic, reflect.TypeOf(v)); !ok {
		return adminError(http.StatusBadRequest, "The request body is not valid: unknown field "+strconv.Quote(name)+".")
	}
	return nil
}

// unknownKey walks a decoded JSON value alongside the Go type it was decoded
// into and reports the first object key that is not exactly a field's JSON
// name. Types other than structs, slices and pointers accept anything.
func unknownKey(v any, t reflect.Type) (string, bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice:
		items, _ := v.([]any)
		for _, it := range items {
			if name, ok := unknownKey(it, t.Elem()); !ok {
				return name, false
			}
		}
	case reflect.Struct:
		obj, _ := v.(map[string]any)
		for key, val := range obj {
			f, ok := fieldByJSONName(t, key)
			if !ok {
				return key, false
			}
			if name, ok := unknownKey(val, f.Type); !ok {
				return name, false
			}
		}
	}
	return "", true
}

func fieldByJSONName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == name || tag == "" && f.Name == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// jsonReason describes a decoding error without echoing request data.
func jsonReason(err error) string {
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te) && te.Field == "":
		return "the body has the wrong JSON type."
	case errors.As(err, &te):
		return te.Field + " has the wrong JSON type."
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") + "."
	default:
		return "malformed JSON."
	}
}

// page is what a list request asked for.
type page struct {
	limit      int
	next, prev string // item ids decoded from the cursors
}

func readPage(q url.Values, defLimit, maxLimit int) (page, *apiError) {
	p := page{limit: defLimit}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxLimit {
			return p, adminError(http.StatusBadRequest, fmt.Sprintf("limit must be an integer from 1 to %d.", maxLimit))
		}
		p.limit = n
	}
	if q.Has("next") && q.Has("prev") {
		return p, adminError(http.StatusBadRequest, "next and prev cannot be combined.")
	}
	for _, c := range []struct {
		name string
		dst  *string
	}{{"next", &p.next}, {"prev", &p.prev}} {
		if !q.Has(c.name) {
			continue
		}
		id, err := base64.RawURLEncoding.DecodeString(q.Get(c.name))
		if err != nil || len(id) == 0 {
			return p, adminError(http.StatusBadRequest, "The "+c.name+" cursor is invalid.")
		}
		*c.dst = string(id)
	}
	return p, nil
}

func cursor(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

// paginate cuts one page out of items, which are in list order. Cursors name
// the item a page continues after (next) or before (prev), so inserts and
// deletes elsewhere do not shift pages; a cursor whose item is gone is 400.
func paginate[T any](items []T, id func(T) string, p page) (out []T, next, prev string, apiErr *apiError) {
	start, end := 0, min(p.limit, len(items))
	at := func(want string) int {
		return slices.IndexFunc(items, func(it T) bool { return id(it) == want })
	}
	switch {
	case p.next != "":
		i := at(p.next)
		if i < 0 {
			return nil, "", "", adminError(http.StatusBadRequest, "The next cursor is no longer valid.")
		}
		start, end = i+1, min(i+1+p.limit, len(items))
	case p.prev != "":
		i := at(p.prev)
		if i < 0 {
			return nil, "", "", adminError(http.StatusBadRequest, "The prev cursor is no longer valid.")
		}
		start, end = max(i-p.limit, 0), i
	}
	out = items[start:end]
	if end < len(items) && end > 0 {
		next = cursor(id(items[end-1]))
	}
	if start > 0 && start < len(items) {
		prev = cursor(id(items[start]))
	}
	return out, next, prev, nil
}

type link struct {
	Href string `json:"href"`
}

type links struct {
	Self link  `json:"self"`
	Next *link `json:"next,omitempty"`
	Prev *link `json:"prev,omitempty"`
}

// pageLinks builds absolute links on the host the request came to.
func pageLinks(r *http.Request, next, prev string) links {
	base := "http://" + r.Host + r.URL.Path
	q := r.URL.Query()
	q.Del("next")
	q.Del("prev")
	l := links{Self: link{base + "?" + r.URL.RawQuery}}
	if r.URL.RawQuery == "" {
		l.Self.Href = base
	}
	with := func(name, c string) *link {
		q := cloneValues(q)
		q.Set(name, c)
		return &link{base + "?" + q.Encode()}
	}
	if next != "" {
		l.Next = with("next", next)
	}
	if prev != "" {
		l.Prev = with("prev", prev)
	}
	return l
}

func cloneValues(q url.Values) url.Values {
	c := make(url.Values, len(q)+1)
	for k, v := range q {
		c[k] = slices.Clone(v)
	}
	return c
}

// sortSpec parses a sort parameter ("name", "+name", "-name") against the
// allowed fields; "" means the default order.
func sortSpec(s string, fields ...string) (field string, desc bool, apiErr *apiError) {
	if s == "" {
		return "", false, nil
	}
	switch s[0] {
	case '-':
		desc, s = true, s[1:]
	case '+':
		s = s[1:]
	}
	for _, f := range fields {
		if strings.EqualFold(f, s) {
			return f, desc, nil
		}
	}
	return "", false, adminError(http.StatusBadRequest, "sort must be one of "+strings.Join(fields, ", ")+", optionally prefixed with + or -.")
}

// timestamp formats t as Qlik does: RFC 3339 UTC with milliseconds.
func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }
