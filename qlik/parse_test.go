package qlik_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

func TestParseTokenResponse(t *testing.T) {
	now := start
	tests := []struct {
		name      string
		body      string
		wantExp   time.Time // zero: want ErrMalformedResponse
		wantScope string
	}{
		{"contract example", `{"access_token":"eyJ","token_type":"bearer","scope":"user_default","expires_at":"2024-03-18T00:21:41.000Z","expires_in":21600}`,
			start.Add(6 * time.Hour), "user_default"},
		{"the earlier of expires_at and expires_in wins", `{"access_token":"a","expires_at":"2024-03-17T19:21:41Z","expires_in":60}`, start.Add(time.Minute), ""},
		{"the earlier of expires_in and expires_at wins", `{"access_token":"a","expires_at":"2024-03-17T19:21:41Z","expires_in":7200}`, start.Add(time.Hour), ""},
		{"expires_at in 1970 (the reference's example) falls back", `{"access_token":"a","expires_at":"1970-01-01T00:00:00.000Z","expires_in":21600}`, start.Add(6 * time.Hour), ""},
		{"expires_at at the epoch as a number falls back", `{"access_token":"a","expires_at":0,"expires_in":21600}`, start.Add(6 * time.Hour), ""},
		{"expires_at far in the future: expires_in bounds it", `{"access_token":"a","expires_at":"9999-12-31T23:59:59Z","expires_in":21600}`, start.Add(6 * time.Hour), ""},
		{"expires_in zero, expires_at fine", `{"access_token":"a","expires_at":"2024-03-17T19:21:41Z","expires_in":0}`, start.Add(time.Hour), ""},
		{"both in the past", `{"access_token":"a","expires_at":"1970-01-01T00:00:00Z","expires_in":-1}`, time.Time{}, ""},
		{"expires_at with offset", `{"access_token":"a","expires_at":"2024-03-17T20:21:41.500+01:00"}`, start.Add(time.Hour + 500*time.Millisecond), ""},
		{"garbled expires_at falls back", `{"access_token":"a","expires_at":"tomorrow","expires_in":60}`, start.Add(time.Minute), ""},
		{"expires_in as string", `{"access_token":"a","expires_in":"60"}`, start.Add(time.Minute), ""},
		{"fractional expires_in", `{"access_token":"a","expires_in":1.5}`, start.Add(1500 * time.Millisecond), ""},
		{"huge expires_in saturates", `{"access_token":"a","expires_in":1e300}`, start.Add(time.Duration(math.MaxInt64 / int64(time.Second) * int64(time.Second))), ""},
		{"upper-case Bearer", `{"access_token":"a","token_type":"Bearer","expires_in":60}`, start.Add(time.Minute), ""},
		{"unknown fields ignored", `{"access_token":"a","refresh_token":"r","x":{"y":[1]},"expires_in":60}`, start.Add(time.Minute), ""},

		{"null", `null`, time.Time{}, ""},
		{"array", `[]`, time.Time{}, ""},
		{"trailing garbage", `{"access_token":"a","expires_in":60} x`, time.Time{}, ""},
		{"access_token not a string", `{"access_token":1,"expires_in":60}`, time.Time{}, ""},
		{"empty access_token", `{"access_token":"","expires_in":60}`, time.Time{}, ""},
		{"garbled expires_at only", `{"access_token":"a","expires_at":"tomorrow"}`, time.Time{}, ""},
		{"expires_in not a number", `{"access_token":"a","expires_in":"soon"}`, time.Time{}, ""},
		{"expires_in overflows float", `{"access_token":"a","expires_in":1e400}`, time.Time{}, ""},
		{"negative expires_in", `{"access_token":"a","expires_in":-5}`, time.Time{}, ""},
		{"huge negative expires_in", `{"access_token":"a","expires_in":-1e300}`, time.Time{}, ""},
		{"token_type mac", `{"access_token":"a","token_type":"mac","expires_in":60}`, time.Time{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := qlik.ParseTokenResponse([]byte(tt.body), now)
			if tt.wantExp.IsZero() {
				if !errors.Is(err, qlik.ErrMalformedResponse) {
					t.Fatalf("got %v, %v; want ErrMalformedResponse", tok, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tok.ExpiresAt.Equal(tt.wantExp) || tok.TokenType != "bearer" || tok.Scope != tt.wantScope {
				t.Errorf("got %v, want expiry %s scope %q", tok, tt.wantExp, tt.wantScope)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2015, 10, 21, 7, 28, 0, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"13", 13 * time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"0", 0, true},
		{"-5", 0, true},
		{"99999999999999999999999", time.Duration(math.MaxInt64), true},
		{"Wed, 21 Oct 2015 07:28:30 GMT", 30 * time.Second, true},
		{"Wednesday, 21-Oct-15 07:29:00 GMT", time.Minute, true}, // RFC 850
		{"Wed Oct 21 07:28:10 2015", 10 * time.Second, true},     // asctime
		{"Wed, 21 Oct 2015 07:27:00 GMT", 0, true},               // past
		{"", 0, false},
		{"   ", 0, false},
		{"soon", 0, false},
		{"1.5", 0, false},
		{"+5", 0, false},
		{"-", 0, false},
		{"5s", 0, false},
		{"2015-10-21T07:28:30Z", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := qlik.ParseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("ParseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestUserLookupValidate(t *testing.T) {
	tests := []struct {
		l  qlik.UserLookup
		ok bool
	}{
		{qlik.UserLookup{Field: qlik.FieldUserID, Value: "6422bad8022070c06d2417bc"}, true},
		{qlik.UserLookup{Field: qlik.FieldSubject, Value: "auth0|ada"}, true},
		{qlik.UserLookup{Field: "email", Value: "ada@example.com"}, false},
		{qlik.UserLookup{Field: "userid", Value: "x"}, false},
		{qlik.UserLookup{Field: qlik.FieldSubject}, false},
		{qlik.UserLookup{}, false},
	}
	for _, tt := range tests {
		err := tt.l.Validate()
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, qlik.ErrInvalidRequest)) {
			t.Errorf("%+v: Validate() = %v", tt.l, err)
		}
	}
}

func FuzzParseTokenResponse(f *testing.F) {
	f.Add([]byte(`{"access_token":"eyJ","token_type":"bearer","scope":"user_default","expires_at":"2024-03-18T00:21:41.000Z","expires_in":21600}`))
	f.Add([]byte(`{"access_token":"a","expires_in":"60"}`))
	f.Add([]byte(`{"access_token":"a","expires_in":1e300}`))
	f.Add([]byte(`{"access_token":"a","expires_at":"2024-03-17T18:21:41.001Z"}`))
	f.Add([]byte(`{"access_token":"a","token_type":"BEARER","expires_in":-1}`))
	f.Add([]byte(`{"error":"invalid_grant"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := qlik.ParseTokenResponse(body, start)
		if err != nil {
			if tok != nil || !errors.Is(err, qlik.ErrMalformedResponse) {
				t.Fatalf("got %v, %v", tok, err)
			}
			// Reasons are fixed phrases: an error never quotes the body.
			if len(err.Error()) > 80 {
				t.Fatalf("error too long to be a fixed phrase: %v", err)
			}
			return
		}
		if tok.AccessToken == "" || tok.TokenType != "bearer" || !tok.ExpiresAt.After(start) {
			t.Fatalf("accepted a token breaking the invariants: %#v exp=%s", tok, tok.ExpiresAt)
		}
	})
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"13", "-5", "0", "99999999999999999999", "Wed, 21 Oct 2015 07:28:00 GMT", "", "soon", " 7 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := qlik.ParseRetryAfter(v, start)
		if d < 0 || (!ok && d != 0) {
			t.Fatalf("ParseRetryAfter(%q) = %s, %v", v, d, ok)
		}
	})
}

// TestExpiryWarning: a token whose expires_at and expires_in disagree is
// still served, with a warning saying which was used; agreeing ones carry
// none.
func TestExpiryWarning(t *testing.T) {
	for body, want := range map[string]string{
		`{"access_token":"a","expires_at":"2024-03-18T00:21:41.000Z","expires_in":21600}`: "",
		`{"access_token":"a","expires_at":"2024-03-18T00:22:41.000Z","expires_in":21600}`: "", // within the tolerance
		`{"access_token":"a","expires_in":21600}`:                                         "",
		`{"access_token":"a","expires_at":"1970-01-01T00:00:00.000Z","expires_in":21600}`: "expires_at is past; using expires_in",
		`{"access_token":"a","expires_at":"tomorrow","expires_in":21600}`:                 "expires_at is invalid; using expires_in",
		`{"access_token":"a","expires_at":"2024-03-18T00:21:41Z","expires_in":"soon"}`:    "expires_in is invalid; using expires_at",
		`{"access_token":"a","expires_at":"2024-03-19T00:21:41Z","expires_in":21600}`:     "expires_at and expires_in disagree by 24h0m0s; using the earlier",
	} {
		tok, err := qlik.ParseTokenResponse([]byte(body), start)
		if err != nil || tok.ExpiryWarning != want {
			t.Errorf("%s: %v, warning %q, want %q", body, err, tok.ExpiryWarning, want)
		}
	}
}
