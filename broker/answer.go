package broker

import (
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// What an answer to a token request needs is prepared once per token, when
// it enters the process, so an L1 hit costs no decoding, hashing, JSON
// encoding or allocation. docs/benchmarks.md ("What was changed to get there") gives
// the measurements behind each trick here; BenchmarkToken and
// BenchmarkTokenHandler guard them.

// cached is a token as the broker serves it. Everything a hit needs is
// ready when the token enters the process (its refresh point, its JSON
// escaping), so a hit costs no decoding, hashing, JSON encoding or
// allocation. It is immutable once built, but for checkAt.
//
// It holds the token's bytes once: the access token string is the text
// answer, and the JSON answer is assembled around it per request (its
// constant parts, the token, the scope, expires_at and expires_in) in a
// pooled buffer, byte for byte what encoding/json writes. An L1 entry is
// a cached user's memory: docs/benchmarks.md ("Memory per cached user")
// has the heap profile behind this layout.
type cached struct {
	tok qlik.Token
	// refreshAt (Unix nanoseconds) is when the background refresh is due.
	refreshAt int64
	// checkAt (Unix nanoseconds, the broker's clock) is when L1 next asks
	// Redis about this token, with Shared set: the copy stays in L1 for
	// the token's life, and L1TTL bounds how long it is served unchecked
	// (recheck.go).
	checkAt atomic.Int64
	// esc holds the token and scope as JSON strings when either has a
	// character encoding/json escapes; nil for every JWT and plain scope.
	esc *escaped
	// verified is the L1 generation (Broker.l1Gen) the copy was last known
	// good in; behind it, the copy is suspect (suspect.go).
	verified atomic.Uint32
}

// escaped are a token's and scope's JSON strings, quotes included.
type escaped struct{ token, scope []byte }

func (b *Broker) newCached(key string, tok qlik.Token) *cached {
	tok.Scope = internScope(tok.Scope)
	c := &cached{tok: tok, refreshAt: b.refreshAt(key, tok).UnixNano()}
	if b.shared != nil {
		c.checkAt.Store(b.now().Add(b.l1TTL).UnixNano())
		c.verified.Store(b.l1Gen.Load())
	}
	if !plainJSON(tok.AccessToken) || !plainJSON(tok.Scope) {
		c.esc = &escaped{token: appendJSONString(nil, tok.AccessToken), scope: appendJSONString(nil, tok.Scope)}
	}
	return c
}

// text is the text/plain answer: the access token's own bytes, which
// nothing writes to.
func (c *cached) text() []byte {
	return unsafe.Slice(unsafe.StringData(c.tok.AccessToken), len(c.tok.AccessToken))
}

// appendJSON appends the JSON answer for the token with expiresIn seconds
// left:
//
//	{"access_token":"…","token_type":"bearer","scope":"…","expires_at":"…","expires_in":…}
//
// Strings are escaped exactly as encoding/json escapes them, so answers
// from L1 cost no JSON encoding (echo's reflective encoder was a quarter
// of an L1 hit's CPU) and no allocation when b has room.
func (c *cached) appendJSON(b []byte, expiresIn int64) []byte {
	b = append(b, `{"access_token":`...)
	if c.esc != nil {
		b = append(b, c.esc.token...)
	} else {
		b = append(append(append(b, '"'), c.tok.AccessToken...), '"')
	}
	b = append(b, `,"token_type":"bearer","scope":`...)
	if c.esc != nil {
		b = append(b, c.esc.scope...)
	} else {
		b = append(append(append(b, '"'), c.tok.Scope...), '"')
	}
	b = append(b, `,"expires_at":"`...)
	b = appendExpiresAt(b, c.tok.ExpiresAt)
	b = append(b, `","expires_in":`...)
	b = strconv.AppendInt(b, expiresIn, 10)
	return append(b, "}\n"...)
}

// expiresAtLayout is how expires_at is written: UTC, milliseconds.
const expiresAtLayout = "2006-01-02T15:04:05.000Z07:00"

// appendExpiresAt appends t as time.Format(expiresAtLayout) in UTC would,
// digit by digit for four-digit years (a fifth of AppendFormat's time on
// every JSON answer).
func appendExpiresAt(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, expiresAtLayout)
	}
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / int(time.Millisecond)
	d := func(v int) (byte, byte) { return byte('0' + v/10), byte('0' + v%10) }
	y1, y2 := d(year / 100)
	y3, y4 := d(year % 100)
	mo1, mo2 := d(int(month))
	d1, d2 := d(day)
	h1, h2 := d(hour)
	mi1, mi2 := d(minute)
	s1, s2 := d(sec)
	return append(b, y1, y2, y3, y4, '-', mo1, mo2, '-', d1, d2, 'T', h1, h2, ':', mi1, mi2, ':', s1, s2,
		'.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
}

// scopes interns granted scopes: a tenant grants the same one or few
// scope strings to every user, so each cached token need not hold its
// own copy. Bounded, since a tenant decides what it grants.
var scopes struct {
	mu sync.Mutex
	m  map[string]string
}

func internScope(s string) string {
	scopes.mu.Lock()
	defer scopes.mu.Unlock()
	if v, ok := scopes.m[s]; ok {
		return v
	}
	if scopes.m == nil || len(scopes.m) >= 64 {
		scopes.m = make(map[string]string)
	}
	s = strings.Clone(s) // never a part of a larger string
	scopes.m[s] = s
	return s
}

// plainJSON reports whether s is written in JSON as it is, between
// quotes: printable ASCII without the characters encoding/json escapes
// (every JWT and scope).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// appendJSONString appends s as a JSON string, as encoding/json writes
// it.
func appendJSONString(b []byte, s string) []byte {
	if !plainJSON(s) {
		q, _ := json.Marshal(s) // a string: cannot fail
		return append(b, q...)
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Header values set on every request or token answer, shared rather than
// allocated each time (Header.Set allocates its one-element slice).
// Nothing writes into a header value in place, and Header.Add on one of
// these appends to a full slice, which copies it.
var (
	hdrNoStore    = []string{"no-store"}
	hdrNoCache    = []string{"no-cache"}
	hdrJSON       = []string{echo.MIMEApplicationJSON}
	hdrText       = []string{echo.MIMETextPlainCharsetUTF8}
	hdrNoSniff    = []string{"nosniff"}
	hdrNoReferer  = []string{"no-referrer"}
	hdrVaryOrigin = []string{echo.HeaderOrigin}
)

// answerBufs holds the buffers JSON token answers are assembled in.
var answerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// writeToken sends a token as JSON, or as raw text when asked.
func (a *API) writeToken(c echo.Context, tok *cached) error {
	h := c.Response().Header()
	h["Cache-Control"] = hdrNoStore
	h["Pragma"] = hdrNoCache
	if prefersText(c.Request().Header.Get(echo.HeaderAccept)) {
		h[echo.HeaderContentType] = hdrText // Blob keeps a set Content-Type
		return c.Blob(http.StatusOK, echo.MIMETextPlainCharsetUTF8, tok.text())
	}
	h[echo.HeaderContentType] = hdrJSON
	buf := answerBufs.Get().(*[]byte)
	body := tok.appendJSON((*buf)[:0], int64(tok.tok.ExpiresAt.Sub(a.broker.now())/time.Second))
	err := c.Blob(http.StatusOK, echo.MIMEApplicationJSON, body)
	*buf = body
	answerBufs.Put(buf)
	return err
}

// prefersText reports whether an Accept header asks for text/plain before
// any JSON type, which is what a qlik-embed getAccessToken wrapper wants.
func prefersText(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		mt, _, _ := strings.Cut(part, ";")
		switch strings.ToLower(strings.TrimSpace(mt)) {
		case "text/plain":
			return true
		case "application/json", "*/*", "application/*":
			return false
		}
	}
	return false
}

// The stored form of a token: a version byte, the expiry in Unix
// nanoseconds, then length-prefixed token type and scope, then the access
// token. Cheaper than JSON on every L1 hit (measured: BenchmarkToken/L1).
const codecVersion = 1

func encodeToken(t qlik.Token) []byte {
	raw := make([]byte, 0, 1+8+2+len(t.TokenType)+2+len(t.Scope)+len(t.AccessToken))
	raw = append(raw, codecVersion)
	raw = binary.BigEndian.AppendUint64(raw, uint64(t.ExpiresAt.UnixNano()))
	raw = binary.BigEndian.AppendUint16(raw, uint16(min(len(t.TokenType), 0xffff)))
	raw = append(raw, t.TokenType[:min(len(t.TokenType), 0xffff)]...)
	raw = binary.BigEndian.AppendUint16(raw, uint16(min(len(t.Scope), 0xffff)))
	raw = append(raw, t.Scope[:min(len(t.Scope), 0xffff)]...)
	return append(raw, t.AccessToken...)
}

func decodeToken(raw []byte) (qlik.Token, error) {
	if len(raw) < 1+8+2 || raw[0] != codecVersion {
		return qlik.Token{}, errBadCachedToken
	}
	exp := int64(binary.BigEndian.Uint64(raw[1:9]))
	rest := raw[9:]
	field := func() (string, bool) {
		if len(rest) < 2 {
			return "", false
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return "", false
		}
		v := "bearer" // every token's type: not 8 bytes of each cached user's heap
		if string(rest[2:2+n]) != v {
			v = string(rest[2 : 2+n])
		}
		rest = rest[2+n:]
		return v, true
	}
	tokenType, ok1 := field()
	scope, ok2 := field()
	if !ok1 || !ok2 || len(rest) == 0 {
		return qlik.Token{}, errBadCachedToken
	}
	return qlik.Token{AccessToken: string(rest), TokenType: tokenType, Scope: scope, ExpiresAt: time.Unix(0, exp)}, nil
}
