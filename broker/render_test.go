package broker

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// wantTokenAnswer is the answer as encoding/json renders it, which the
// hand-assembled answer must match byte for byte.
func wantTokenAnswer(t testing.TB, tok qlik.Token, expiresIn int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	err := json.NewEncoder(&buf).Encode(struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		Scope       string `json:"scope"`
		ExpiresAt   string `json:"expires_at"`
		ExpiresIn   int64  `json:"expires_in"`
	}{tok.AccessToken, "bearer", tok.Scope, tok.ExpiresAt.UTC().Format("2006-01-02T15:04:05.000Z07:00"), expiresIn})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func checkRendered(t testing.TB, tok qlik.Token, expiresIn int64) {
	t.Helper()
	b := &Broker{}
	c := b.newCached("qtb:tok:acme:{x}", tok)
	got := c.appendJSON(nil, expiresIn)
	if want := wantTokenAnswer(t, tok, expiresIn); !bytes.Equal(got, want) {
		t.Fatalf("answer for %q, %q:\n got %s\nwant %s", tok.AccessToken, tok.Scope, got, want)
	}
	if string(c.text()) != tok.AccessToken {
		t.Fatalf("text answer = %q, want %q", c.text(), tok.AccessToken)
	}
	if c.tok.AccessToken != tok.AccessToken || c.tok.Scope != tok.Scope || !c.tok.ExpiresAt.Equal(tok.ExpiresAt) {
		t.Fatalf("cached token %+v, want %+v", c.tok, tok)
	}
}

func TestRenderedAnswerMatchesEncodingJSON(t *testing.T) {
	exp := time.Date(2026, 11, 26, 9, 30, 1, 123456789, time.FixedZone("x", 3600))
	for _, tc := range []struct{ access, scope string }{
		{"eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJhZGEifQ.c2ln", "user_default"},
		{"", ""},
		{`quote"back\slash`, "a b"},
		{"<script>&amp;</script>", "x>y"},
		{"tab\tnewline\nnul\x00del\x7f", "é ü 日本"},
		{"\u2028\u2029", "bad utf-8 \xff\xfe"},
		{`\\`, `\"`},
	} {
		for _, in := range []int64{0, 1, 21540, -5} {
			checkRendered(t, qlik.Token{AccessToken: tc.access, Scope: tc.scope, ExpiresAt: exp}, in)
		}
	}
}

func FuzzRenderedAnswer(f *testing.F) {
	f.Add("eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJhZGEifQ.c2ln", "user_default", int64(1764149401123456789), int64(21540))
	f.Add(`a"b\c<d>&e`, "\u2028", int64(0), int64(-1))
	f.Fuzz(func(t *testing.T, access, scope string, expNanos, expiresIn int64) {
		checkRendered(t, qlik.Token{AccessToken: access, Scope: scope, ExpiresAt: time.Unix(0, expNanos)}, expiresIn)
	})
}
