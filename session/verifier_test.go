package session_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

func TestVerifyEveryAlgorithm(t *testing.T) {
	t.Parallel()
	for _, tc := range algCases(t) {
		t.Run(tc.alg, func(t *testing.T) {
			t.Parallel()
			v := newVerifier(t, tc.cfg)
			ctx := context.Background()

			id, err := v.Verify(ctx, sign(t, tc.method, tc.key, claims(nil), nil))
			if err != nil {
				t.Fatalf("right key: %v", err)
			}
			want := session.Identity{Subject: "alice", UserField: session.LookupUserID, UserValue: "alice", ExpiresAt: now.Add(time.Hour)}
			if !id.ExpiresAt.Equal(want.ExpiresAt) {
				t.Fatalf("ExpiresAt = %v, want %v", id.ExpiresAt, want.ExpiresAt)
			}
			id.ExpiresAt = want.ExpiresAt
			if !reflect.DeepEqual(id, want) {
				t.Fatalf("identity = %+v, want %+v", id, want)
			}

			_, err = v.Verify(ctx, sign(t, tc.method, tc.wrongKey, claims(nil), nil))
			wantReason(t, err, session.ReasonSignature)

			for _, none := range []string{"none", "None", "NONE", "nOnE"} {
				_, err = v.Verify(ctx, unsigned(t, none, claims(nil)))
				wantReason(t, err, session.ReasonAlgorithm)
			}
			// alg none with the header otherwise identical to a valid token.
			valid := sign(t, tc.method, tc.key, claims(nil), nil)
			parts := strings.Split(valid, ".")
			_, err = v.Verify(ctx, b64(`{"alg":"none","typ":"JWT"}`)+"."+parts[1]+".")
			wantReason(t, err, session.ReasonAlgorithm)
			// A valid token with the signature stripped.
			_, err = v.Verify(ctx, parts[0]+"."+parts[1]+".")
			wantReason(t, err, session.ReasonSignature)
		})
	}
}

// TestVerifyAlgorithmConfusion covers the classic attacks on public-key
// verifiers: HMAC with the public key as secret, and algorithms of another
// key family.
func TestVerifyAlgorithmConfusion(t *testing.T) {
	t.Parallel()
	k := keys()
	for _, tc := range algCases(t) {
		if tc.public == nil {
			continue
		}
		t.Run(tc.alg, func(t *testing.T) {
			t.Parallel()
			v := newVerifier(t, tc.cfg)
			for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
				// The public key PEM bytes (what a confused verifier would use as the secret)...
				_, err := v.Verify(context.Background(), sign(t, m, tc.cfg.PublicKeyPEM, claims(nil), nil))
				wantReason(t, err, session.ReasonAlgorithm)
				// ...and its DER bytes.
				der := pkixDER(t, tc.public)
				_, err = v.Verify(context.Background(), sign(t, m, der, claims(nil), nil))
				wantReason(t, err, session.ReasonAlgorithm)
			}
			// A different key family's algorithm is not in the allow-list either.
			other := jwt.SigningMethod(jwt.SigningMethodEdDSA)
			var otherKey any = k.ed25519
			if tc.alg == "EdDSA" {
				other, otherKey = jwt.SigningMethodRS256, k.rsa
			}
			_, err := v.Verify(context.Background(), sign(t, other, otherKey, claims(nil), nil))
			wantReason(t, err, session.ReasonAlgorithm)
		})
	}
}

func pkixDER(t *testing.T, pub any) []byte {
	t.Helper()
	p := pkixPEM(t, pub)
	s := string(p)
	s = strings.TrimPrefix(s, "-----BEGIN PUBLIC KEY-----\n")
	s = strings.TrimSuffix(s, "-----END PUBLIC KEY-----\n")
	der, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(s, "\n", ""))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestVerifyRejections(t *testing.T) {
	t.Parallel()
	k := keys()
	hs := jwt.SigningMethodHS256
	cfg := session.Config{
		HMACSecret:  k.hmac,
		Issuer:      "https://app.example.com",
		Audience:    "qlik-token-broker",
		Leeway:      30 * time.Second,
		TenantClaim: "tenant",
	}
	v := newVerifier(t, cfg)
	good := map[string]any{"iss": cfg.Issuer, "aud": cfg.Audience, "tenant": "acme"}
	with := func(over map[string]any) jwt.MapClaims {
		c := claims(good)
		for k, val := range over {
			if val == nil {
				delete(c, k)
				continue
			}
			c[k] = val
		}
		return c
	}
	tok := func(over map[string]any) string { return sign(t, hs, k.hmac, with(over), nil) }
	valid := tok(nil)
	parts := strings.Split(valid, ".")

	tests := []struct {
		name  string
		token string
		want  session.Reason // "" means accepted
	}{
		{"valid", valid, ""},
		{"empty", "", session.ReasonMissing},
		{"expired", tok(map[string]any{"exp": now.Add(-31 * time.Second).Unix()}), session.ReasonExpired},
		{"expired long ago", tok(map[string]any{"exp": now.Add(-24 * time.Hour).Unix(), "iat": now.Add(-25 * time.Hour).Unix()}), session.ReasonExpired},
		{"expired within leeway", tok(map[string]any{"exp": now.Add(-29 * time.Second).Unix()}), ""},
		{"exp equals now", tok(map[string]any{"exp": now.Unix()}), ""},
		{"nbf in future", tok(map[string]any{"nbf": now.Add(time.Minute).Unix()}), session.ReasonNotYetValid},
		{"nbf within leeway", tok(map[string]any{"nbf": now.Add(29 * time.Second).Unix()}), ""},
		{"iat in future", tok(map[string]any{"iat": now.Add(time.Minute).Unix()}), session.ReasonNotYetValid},
		{"iat within leeway", tok(map[string]any{"iat": now.Add(29 * time.Second).Unix()}), ""},
		{"missing exp", tok(map[string]any{"exp": nil}), session.ReasonMissingExpiry},
		{"exp zero", tok(map[string]any{"exp": 0}), session.ReasonMissingExpiry},
		{"exp string", tok(map[string]any{"exp": fmt.Sprint(now.Add(time.Hour).Unix())}), session.ReasonMissingExpiry},
		{"wrong iss", tok(map[string]any{"iss": "https://evil.example.com"}), session.ReasonIssuer},
		{"missing iss", tok(map[string]any{"iss": nil}), session.ReasonIssuer},
		{"numeric iss", tok(map[string]any{"iss": 7}), session.ReasonIssuer},
		{"wrong aud", tok(map[string]any{"aud": "someone-else"}), session.ReasonAudience},
		{"missing aud", tok(map[string]any{"aud": nil}), session.ReasonAudience},
		{"aud list with ours", tok(map[string]any{"aud": []string{"x", cfg.Audience}}), ""},
		{"aud list without ours", tok(map[string]any{"aud": []string{"x", "y"}}), session.ReasonAudience},
		{"missing user claim", tok(map[string]any{"sub": nil}), session.ReasonUserClaim},
		{"empty user claim", tok(map[string]any{"sub": ""}), session.ReasonUserClaim},
		{"blank user claim", tok(map[string]any{"sub": "  "}), session.ReasonUserClaim},
		{"numeric user claim", tok(map[string]any{"sub": 42}), session.ReasonUserClaim},
		{"array user claim", tok(map[string]any{"sub": []string{"alice"}}), session.ReasonUserClaim},
		{"object user claim", tok(map[string]any{"sub": map[string]any{"id": "alice"}}), session.ReasonUserClaim},
		{"control char in user claim", tok(map[string]any{"sub": "alice\nadmin"}), session.ReasonUserClaim},
		{"missing tenant", tok(map[string]any{"tenant": nil}), session.ReasonTenantClaim},
		{"empty tenant", tok(map[string]any{"tenant": ""}), session.ReasonTenantClaim},
		{"numeric tenant", tok(map[string]any{"tenant": 3}), session.ReasonTenantClaim},
		{"crit header", sign(t, hs, k.hmac, with(nil), map[string]any{"crit": []string{"exp"}}), session.ReasonCritical},
		{"empty crit header", sign(t, hs, k.hmac, with(nil), map[string]any{"crit": []string{}}), session.ReasonCritical},
		{"missing alg", sign(t, hs, k.hmac, with(nil), map[string]any{"alg": nil}), session.ReasonAlgorithm},
		{"numeric alg", signRaw(t, hs, k.hmac, `{"alg":256}`, `{}`), session.ReasonAlgorithm},
		{"two segments", parts[0] + "." + parts[1], session.ReasonMalformed},
		{"four segments", valid + "." + parts[2], session.ReasonMalformed},
		{"one segment", parts[0], session.ReasonMalformed},
		{"non-canonical signature", parts[0] + "." + parts[1] + "." + flipTrailingBit(t, parts[2]), session.ReasonMalformed},
		{"padded signature", valid + "=", session.ReasonMalformed},
		{"standard base64 alphabet", parts[0] + "." + parts[1] + "." + strings.NewReplacer("-", "+", "_", "/").Replace(parts[2]) + "+", session.ReasonMalformed},
		{"header not JSON", b64("nope") + "." + parts[1] + "." + parts[2], session.ReasonMalformed},
		{"header JSON array", b64(`["HS256"]`) + "." + parts[1] + "." + parts[2], session.ReasonMalformed},
		{"payload not JSON", signRaw(t, hs, k.hmac, `{"alg":"HS256"}`, `nope`), session.ReasonMalformed},
		{"payload with trailing data", signRaw(t, hs, k.hmac, `{"alg":"HS256"}`, `{"sub":"alice","exp":1700003600}{}`), session.ReasonMalformed},
		{"tampered payload", parts[0] + "." + b64(`{"sub":"mallory","exp":1700003600}`) + "." + parts[2], session.ReasonSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, err := v.Verify(context.Background(), tc.token)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v (%v)", err, errors.Unwrap(err))
				}
				if id.UserValue != "alice" || id.Tenant != "acme" {
					t.Fatalf("identity = %+v", id)
				}
				return
			}
			wantReason(t, err, tc.want)
			if !reflect.DeepEqual(id, session.Identity{}) {
				t.Fatalf("rejected token returned identity %+v", id)
			}
			if tc.token != "" && strings.Contains(err.Error(), tc.token) {
				t.Fatalf("error text contains the token")
			}
		})
	}
}

// flipTrailingBit changes the unused low bits of the last base64url
// character: a lenient decoder yields the same bytes, a strict one refuses.
func flipTrailingBit(t *testing.T, seg string) string {
	t.Helper()
	if len(seg)%4 == 0 {
		t.Fatalf("segment of length %d has no trailing bits", len(seg))
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, seg[len(seg)-1])
	out := seg[:len(seg)-1] + string(alphabet[i^1])
	a, errA := base64.RawURLEncoding.DecodeString(seg)
	b, errB := base64.RawURLEncoding.DecodeString(out)
	if errA != nil || errB != nil || string(a) != string(b) {
		t.Fatalf("flipTrailingBit changed the decoded bytes; the test would prove nothing")
	}
	return out
}

// TestVerifyHeaderFaultsFirst: a header's own fault (alg, crit, not an
// object) is the reason whatever else is wrong with the token, even when
// jwt gives up on the claims or the signature first.
func TestVerifyHeaderFaultsFirst(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newVerifier(t, session.Config{HMACSecret: k.hmac})
	good := fmt.Sprintf(`{"sub":"alice","exp":%d}`, now.Add(time.Hour).Unix())
	expired := fmt.Sprintf(`{"sub":"alice","exp":%d}`, now.Add(-time.Hour).Unix())
	// token joins the segments, signing them with key unless sig is given.
	token := func(header, payloadSeg string, key []byte, sig string) string {
		in := b64(header) + "." + payloadSeg
		if sig == "" {
			s, err := jwt.SigningMethodHS256.Sign(in, key)
			if err != nil {
				t.Fatal(err)
			}
			sig = base64.RawURLEncoding.EncodeToString(s)
		}
		return in + "." + sig
	}
	faults := []struct {
		name    string
		payload string // encoded segment
		key     []byte
		sig     string
		alone   session.Reason // the reason with a good header
	}{
		{"payload not JSON", b64("nope"), k.hmac, "", session.ReasonMalformed},
		{"payload not base64url", "e30!", k.hmac, "", session.ReasonMalformed},
		{"payload trailing data", b64(good + "{}"), k.hmac, "", session.ReasonMalformed},
		{"signature not base64url", b64(good), k.hmac, "$$$", session.ReasonMalformed},
		{"wrong key", b64(good), k.hmacOther, "", session.ReasonSignature},
		{"expired", b64(expired), k.hmac, "", session.ReasonExpired},
	}
	headers := []struct {
		header string
		want   session.Reason // "" means the fault's own reason
	}{
		{`{"alg":"HS256"}`, ""},
		{`{"alg":"none"}`, session.ReasonAlgorithm},
		{`{"alg":"RS256"}`, session.ReasonAlgorithm},
		{`{"alg":"HS256","alg":"XYZ"}`, session.ReasonAlgorithm},
		{`{"alg":"HS256","crit":["exp"]}`, session.ReasonCritical},
		{`null`, session.ReasonMalformed},
		{`[]`, session.ReasonMalformed},
	}
	for _, h := range headers {
		for _, f := range faults {
			want := h.want
			if want == "" {
				want = f.alone
			}
			_, err := v.Verify(context.Background(), token(h.header, f.payload, f.key, f.sig))
			t.Run(h.header+" "+f.name, func(t *testing.T) { wantReason(t, err, want) })
		}
	}
}

func TestVerifyMaxTokenBytes(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newVerifier(t, session.Config{HMACSecret: k.hmac, MaxTokenBytes: 512})
	if v.MaxTokenBytes() != 512 {
		t.Fatalf("MaxTokenBytes() = %d", v.MaxTokenBytes())
	}
	small := sign(t, jwt.SigningMethodHS256, k.hmac, claims(nil), nil)
	if _, err := v.Verify(context.Background(), small); err != nil {
		t.Fatalf("small token: %v", err)
	}
	big := sign(t, jwt.SigningMethodHS256, k.hmac, claims(map[string]any{"pad": strings.Repeat("x", 600)}), nil)
	_, err := v.Verify(context.Background(), big)
	wantReason(t, err, session.ReasonTooLarge)
	// The length check comes before parsing: garbage of that size is "too large", not "malformed".
	_, err = v.Verify(context.Background(), strings.Repeat(".", 513))
	wantReason(t, err, session.ReasonTooLarge)

	def := newVerifier(t, session.Config{HMACSecret: k.hmac})
	if def.MaxTokenBytes() != session.DefaultMaxTokenBytes {
		t.Fatalf("default MaxTokenBytes() = %d", def.MaxTokenBytes())
	}
	_, err = def.Verify(context.Background(), strings.Repeat("a", session.DefaultMaxTokenBytes+1))
	wantReason(t, err, session.ReasonTooLarge)
}

// TestVerifyDuplicateKeys pins what encoding/json does with repeated names
// inside a signed token: the last occurrence wins, in the claims and in the
// header alike. Only the holder of the key can produce such a token.
func TestVerifyDuplicateKeys(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newVerifier(t, session.Config{HMACSecret: k.hmac})
	exp := now.Add(time.Hour).Unix()

	tok := signRaw(t, jwt.SigningMethodHS256, k.hmac, `{"alg":"HS256"}`,
		fmt.Sprintf(`{"sub":"alice","exp":%d,"sub":"mallory"}`, exp))
	id, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if id.UserValue != "mallory" || id.Subject != "mallory" {
		t.Fatalf("duplicate sub: got %+v, want the last value (mallory)", id)
	}

	// A repeated exp: the last (expired) one counts.
	tok = signRaw(t, jwt.SigningMethodHS256, k.hmac, `{"alg":"HS256"}`,
		fmt.Sprintf(`{"sub":"alice","exp":%d,"exp":%d}`, exp, now.Add(-time.Hour).Unix()))
	_, err = v.Verify(context.Background(), tok)
	wantReason(t, err, session.ReasonExpired)

	// A repeated alg: the pre-check and jwt both see the last one.
	tok = signRaw(t, jwt.SigningMethodHS256, k.hmac, `{"alg":"HS256","alg":"none"}`, fmt.Sprintf(`{"sub":"alice","exp":%d}`, exp))
	_, err = v.Verify(context.Background(), tok)
	wantReason(t, err, session.ReasonAlgorithm)
	tok = signRaw(t, jwt.SigningMethodHS256, k.hmac, `{"alg":"none","alg":"HS256"}`, fmt.Sprintf(`{"sub":"alice","exp":%d}`, exp))
	if _, err = v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("last alg HS256: %v", err)
	}
}

func TestVerifyUserMapping(t *testing.T) {
	t.Parallel()
	k := keys()
	hs := jwt.SigningMethodHS256
	tests := []struct {
		name   string
		cfg    session.Config
		claims jwt.MapClaims
		want   session.Identity
		reason session.Reason
	}{
		{
			name:   "custom user claim and subject lookup",
			cfg:    session.Config{UserClaim: "qlik_subject", UserLookup: session.LookupSubject, TenantClaim: "org"},
			claims: claims(map[string]any{"qlik_subject": "auth0|123", "org": "acme"}),
			want:   session.Identity{Subject: "alice", UserField: session.LookupSubject, UserValue: "auth0|123", Tenant: "acme"},
		},
		{
			name:   "no sub at all",
			cfg:    session.Config{UserClaim: "email"},
			claims: claims(map[string]any{"sub": nil, "email": "a@example.com"}),
			want:   session.Identity{UserField: session.LookupUserID, UserValue: "a@example.com"},
		},
		{
			name:   "numeric sub is refused even when not the user claim",
			cfg:    session.Config{UserClaim: "email"},
			claims: claims(map[string]any{"sub": 1, "email": "a@example.com"}),
			reason: session.ReasonInvalid,
		},
		{
			name:   "user claim must be a string",
			cfg:    session.Config{UserClaim: "uid"},
			claims: claims(map[string]any{"uid": 12345}),
			reason: session.ReasonUserClaim,
		},
		{
			name:   "tenant not configured is ignored",
			cfg:    session.Config{},
			claims: claims(map[string]any{"tenant": 5}),
			want:   session.Identity{Subject: "alice", UserField: session.LookupUserID, UserValue: "alice"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.cfg.HMACSecret = k.hmac
			v := newVerifier(t, tc.cfg)
			id, err := v.Verify(context.Background(), sign(t, hs, k.hmac, tc.claims, nil))
			if tc.reason != "" {
				wantReason(t, err, tc.reason)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			id.ExpiresAt = time.Time{}
			if !reflect.DeepEqual(id, tc.want) {
				t.Fatalf("identity = %+v, want %+v", id, tc.want)
			}
		})
	}
}

// TestVerifyIgnoresKeyHeaders: jku, x5u, jwk and x5c must never be used,
// neither fetched nor trusted.
func TestVerifyIgnoresKeyHeaders(t *testing.T) {
	t.Parallel()
	k := keys()
	var hits atomic.Int64
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "no", http.StatusTeapot)
	}))
	t.Cleanup(attacker.Close)

	pub := k.attackerEd25519.Public()
	header := map[string]any{
		"jku": attacker.URL + "/jwks.json",
		"x5u": attacker.URL + "/cert.pem",
		"jwk": map[string]any{"kty": "OKP", "crv": "Ed25519", "x": base64.RawURLEncoding.EncodeToString(pub.(ed25519.PublicKey))},
		"x5c": []string{base64.StdEncoding.EncodeToString(pkixDER(t, pub))},
		"kid": "attacker",
	}
	tok := sign(t, jwt.SigningMethodEdDSA, k.attackerEd25519, claims(nil), header)

	static := newVerifier(t, session.Config{PublicKeyPEM: pkixPEM(t, k.ed25519.Public())})
	_, err := static.Verify(context.Background(), tok)
	wantReason(t, err, session.ReasonSignature)

	js := newJWKSServer(t)
	js.setKeys(t, jwkFor(t, k.ed25519.Public(), "good", "EdDSA"))
	jv := newVerifier(t, session.Config{JWKSURL: js.srv.URL})
	_, err = jv.Verify(context.Background(), tok)
	wantReason(t, err, session.ReasonUnknownKey)
	delete(header, "kid")
	_, err = jv.Verify(context.Background(), sign(t, jwt.SigningMethodEdDSA, k.attackerEd25519, claims(nil), header))
	wantReason(t, err, session.ReasonSignature)

	if n := hits.Load(); n != 0 {
		t.Fatalf("attacker URLs were fetched %d times", n)
	}
}

func TestErrorAndReasons(t *testing.T) {
	t.Parallel()
	rs := session.Reasons()
	if len(rs) != 16 { // 15 before bad_groups_claim
		t.Fatalf("Reasons() has %d entries", len(rs))
	}
	seen := map[session.Reason]bool{}
	for _, r := range rs {
		if r == "" || seen[r] {
			t.Fatalf("empty or duplicate reason %q", r)
		}
		seen[r] = true
	}
	rs[0] = "mutated"
	if session.Reasons()[0] == "mutated" {
		t.Fatal("Reasons() returns shared state")
	}

	cause := jwt.ErrTokenExpired
	e := &session.Error{Reason: session.ReasonExpired, Err: cause}
	if e.Error() != "session: expired" {
		t.Fatalf("Error() = %q", e.Error())
	}
	wrapped := fmt.Errorf("broker: %w", e)
	if !errors.Is(wrapped, jwt.ErrTokenExpired) {
		t.Fatal("Unwrap does not reach the cause")
	}
	if got := session.ReasonOf(wrapped); got != session.ReasonExpired {
		t.Fatalf("ReasonOf(wrapped) = %q", got)
	}
	if got := session.ReasonOf(errors.New("x")); got != session.ReasonInvalid {
		t.Fatalf("ReasonOf(other) = %q", got)
	}
	if got := session.ReasonOf(nil); got != "" {
		t.Fatalf("ReasonOf(nil) = %q", got)
	}

	// Every reason Verify returns is one of Reasons().
	k := keys()
	v := newVerifier(t, session.Config{HMACSecret: k.hmac})
	_, err := v.Verify(context.Background(), "a.b.c")
	if r := session.ReasonOf(err); !slices.Contains(session.Reasons(), r) {
		t.Fatalf("reason %q not listed", r)
	}
}
