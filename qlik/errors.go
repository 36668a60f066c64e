package qlik

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

var (
	// ErrMalformedResponse means the tenant answered 2xx with a body this client
	// cannot use: not JSON, no access_token, no expiry, already expired, or too large.
	ErrMalformedResponse = errors.New("qlik: malformed response")

	// ErrInvalidRequest means the caller's arguments were rejected before any
	// request was sent (bad user lookup, missing credentials or token).
	ErrInvalidRequest = errors.New("qlik: invalid request")

	// ErrUserNotFound means a user search (FindUserByEmail, FindUserBySubject)
	// matched nobody, or UserGroups was answered 404 (the *Error stays
	// reachable with errors.As).
	ErrUserNotFound = errors.New("qlik: user not found")

	// ErrAmbiguousUser means a user search that should name one user matched
	// several, so picking one would be a guess.
	ErrAmbiguousUser = errors.New("qlik: more than one user matches")

	// ErrTooManyPages means a list call stopped following links.next after
	// maxPages pages rather than loop without bound.
	ErrTooManyPages = errors.New("qlik: too many result pages")
)

// Error is a non-2xx answer from the tenant. It carries what a caller needs to
// log and nothing of the request: no URL, body, secret or token. Codes are
// opaque (Qlik publishes no catalogue of its OAUTH-n, USERS-n, HTTP-n codes):
// decide by StatusCode, and quote TraceID, which Qlik support asks for.
type Error struct {
	Endpoint   string        // "token", "revoke", "users", "users-me", "groups", "oauth-clients", "oauth-client-secrets" or "oauth-client-consent"
	StatusCode int           // HTTP status
	Code       string        // first errors[].code (e.g. OAUTH-14), or the RFC 6749 "error"
	Title      string        // errors[].title, or error_description
	Detail     string        // errors[].detail; may echo request data, so Error() omits it
	Status     string        // errors[].status as sent, a string ("400") or a number (400); "" when absent
	TraceID    string        // the body's top-level traceId; "" when absent
	RetryAfter time.Duration // parsed Retry-After; 0 when absent or invalid
}

// Error formats as `qlik: token: 429 HTTP-429 "API rate limit reached."`.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("qlik: ")
	b.WriteString(e.Endpoint)
	b.WriteString(": ")
	b.WriteString(strconv.Itoa(e.StatusCode))
	if e.Code != "" {
		b.WriteByte(' ')
		b.WriteString(quoteIfOdd(truncate(e.Code, 64)))
	}
	if e.Title != "" {
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(truncate(e.Title, 200)))
	}
	if e.TraceID != "" {
		b.WriteString(" traceId=")
		b.WriteString(quoteIfOdd(truncate(e.TraceID, 64)))
	}
	return b.String()
}

// Temporary reports whether retrying later may succeed: 429 or 5xx.
func (e *Error) Temporary() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// errorBody accepts both the documented Qlik shape and the RFC 6749 one.
// status is a string in the OAuth API and a number in the users API.
type errorBody struct {
	Errors []struct {
		Code   string          `json:"code"`
		Title  string          `json:"title"`
		Detail string          `json:"detail"`
		Status json.RawMessage `json:"status"`
	} `json:"errors"`
	TraceID          json.RawMessage `json:"traceId"`
	Error            string          `json:"error"`
	ErrorDescription string          `json:"error_description"`
}

// scalar returns a JSON string's value or a JSON number's digits; anything
// else (object, array, null, absent) is "".
func scalar(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

func newError(endpoint string, status int, header http.Header, body []byte, now time.Time) *Error {
	e := &Error{Endpoint: endpoint, StatusCode: status}
	if d, ok := ParseRetryAfter(header.Get("Retry-After"), now); ok {
		e.RetryAfter = d
	}
	var eb errorBody
	if json.Unmarshal(body, &eb) != nil {
		return e
	}
	if id := scalar(eb.TraceID); id != "" {
		e.TraceID = truncate(id, 128)
	}
	switch {
	case len(eb.Errors) > 0:
		first := eb.Errors[0]
		e.Code, e.Title, e.Detail, e.Status = first.Code, first.Title, first.Detail, truncate(scalar(first.Status), 16)
	case eb.Error != "":
		e.Code, e.Title = eb.Error, eb.ErrorDescription
	}
	return e
}

// ParseRetryAfter parses a Retry-After value, either delta-seconds or an
// HTTP-date taken relative to now. ok is false for an empty or unparseable
// value. Negative seconds and past dates give 0, true. The result is not
// clamped: bounding the wait is the caller's policy.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	digits, negative := v, false
	if strings.HasPrefix(v, "-") {
		digits, negative = v[1:], true
	}
	if isDigits(digits) {
		if negative {
			return 0, true
		}
		secs, err := strconv.ParseUint(digits, 10, 64)
		if err != nil || secs > math.MaxInt64/uint64(time.Second) {
			return time.Duration(math.MaxInt64), true // only overflow remains possible
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// quoteIfOdd leaves ordinary error codes (HTTP-429, invalid_grant) bare and
// quotes anything that could break a log line.
func quoteIfOdd(s string) string {
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r == ':' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') {
			return strconv.Quote(s)
		}
	}
	return s
}
