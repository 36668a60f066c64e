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

// The answer to a token request is built once per token, when it enters
// the process, so an L1 hit costs no decoding, hashing, JSON encoding or
// allocation. docs/benchmarks.md ("What was changed to get there") gives
// the measurements behind each trick here; BenchmarkToken and
// BenchmarkTokenHandler guard them.

// cached is a token as the broker serves it. Everything a hit needs is
// computed once, when the token enters the process: the decoded token, its
// refresh point and its JSON answer (all but expires_in), so a hit costs
// no decoding, hashing or JSON encoding. It is immutable once built, but
// for checkAt.
type cached struct {
	tok       qlik.Token
	refreshAt time.Time
	jsonHead  []byte // the JSON answer up to the value of "expires_in"
	text      []byte // the access token: the text/plain answer
	// checkAt (Unix nanoseconds, the broker's clock) is when L1 next asks
	// Redis about this token, with Shared set: the copy stays in L1 for
	// the token's life, and L1TTL bounds how long it is served unchecked
	// (recheck.go).
	checkAt atomic.Int64
	// verified is the L1 generation (Broker.l1Gen) the copy was last known
	// good in; behind it, the copy is suspect (suspect.go).
	verified atomic.Uint32
}

func (b *Broker) newCached(key string, tok qlik.Token) *cached {
	c := &cached{tok: tok, refreshAt: b.refreshAt(key, tok), jsonHead: renderTokenHead(tok)}
	if b.shared != nil {
		c.checkAt.Store(b.now().Add(b.l1TTL).UnixNano())
		c.verified.Store(b.l1Gen.Load())
	}
	if end := accessTokenAt + len(tok.AccessToken); len(tok.AccessToken) > 0 && len(c.jsonHead) > end &&
		string(c.jsonHead[accessTokenAt:end]) == tok.AccessToken {
		// The token is in the answer unescaped (every JWT is): the text
		// answer and the token itself are that part of it, so each cached
		// user holds the token's bytes once, not three times. Nothing
		// writes to jsonHead once it is rendered.
		c.text = c.jsonHead[accessTokenAt:end:end]
		c.tok.AccessToken = unsafe.String(unsafe.SliceData(c.text), len(c.text))
	} else {
		c.text = []byte(tok.AccessToken)
	}
	return c
}

// renderTokenHead renders the JSON answer for tok up to the value of
// "expires_in", the seconds left, which is all that changes between two
// answers with the same token:
//
//	{"access_token":"…","token_type":"bearer","scope":"…","expires_at":"…","expires_in":
//
// It runs once per token entering the process, so answers from L1 cost no
// JSON encoding (echo's reflective encoder was a quarter of an L1 hit's
// CPU). Strings are escaped exactly as encoding/json escapes them.
func renderTokenHead(tok qlik.Token) []byte {
	const expiresAtLayout = "2006-01-02T15:04:05.000Z07:00"
	b := make([]byte, 0, len(`{"access_token":"","token_type":"bearer","scope":"","expires_at":"","expires_in":`)+
		len(tok.AccessToken)+len(tok.Scope)+len(expiresAtLayout)+16)
	b = append(b, `{"access_token":`...)
	b = appendJSONString(b, tok.AccessToken)
	b = append(b, `,"token_type":"bearer","scope":`...)
	b = appendJSONString(b, tok.Scope)
	b = append(b, `,"expires_at":"`...)
	b = tok.ExpiresAt.UTC().AppendFormat(b, expiresAtLayout)
	return append(b, `","expires_in":`...)
}

// accessTokenAt is where the access token starts in a rendered head.
const accessTokenAt = len(`{"access_token":"`)

// appendJSONString appends s as a JSON string. Strings of printable ASCII
// without characters encoding/json escapes (every JWT and scope) are
// copied as they are; anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string: cannot fail
			return append(b, q...)
		}
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
		return c.Blob(http.StatusOK, echo.MIMETextPlainCharsetUTF8, tok.text)
	}
	h[echo.HeaderContentType] = hdrJSON
	buf := answerBufs.Get().(*[]byte)
	body := append((*buf)[:0], tok.jsonHead...)
	body = strconv.AppendInt(body, int64(tok.tok.ExpiresAt.Sub(a.broker.now())/time.Second), 10)
	body = append(body, "}\n"...)
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
		v := string(rest[2 : 2+n])
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
