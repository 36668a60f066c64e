package cache

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// testKey returns a distinct 32-byte key and its standard base64.
func testKey(seed byte) ([]byte, string) {
	k := bytes.Repeat([]byte{seed}, 32)
	k[0] ^= 0x5a
	return k, base64.StdEncoding.EncodeToString(k)
}

func mustKeyring(t testing.TB, s string) *Keyring {
	t.Helper()
	k, err := ParseKeyring(s)
	if err != nil {
		t.Fatalf("ParseKeyring: %v", err)
	}
	return k
}

func TestParseKeyring(t *testing.T) {
	_, b1 := testKey(1)
	k2, _ := testKey(2)
	b2url := base64.URLEncoding.EncodeToString(k2)
	b2raw := base64.RawURLEncoding.EncodeToString(k2)
	tests := []struct {
		name    string
		in      string
		wantIDs []string
	}{
		{"one", "a:" + b1, []string{"a"}},
		{"comma separated", "old:" + b1 + ",new:" + b2url, []string{"old", "new"}},
		{"spaces around", " old : " + b1 + " , new:" + b2raw + " ", []string{"old", "new"}},
		{"file", "# rotated 2025-01\n\nold:" + b1 + "\r\n  # next\nnew:" + b2raw + " # current\n", []string{"old", "new"}},
		{"id charset", "A-z_0.9:" + b1, []string{"A-z_0.9"}},
		{"longest id", strings.Repeat("x", 32) + ":" + b1, []string{strings.Repeat("x", 32)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustKeyring(t, tt.in)
			if fmt.Sprint(k.ids) != fmt.Sprint(tt.wantIDs) {
				t.Fatalf("ids = %q, want %q", k.ids, tt.wantIDs)
			}
			// The last key seals: a keyring holding only it opens the value.
			last := tt.wantIDs[len(tt.wantIDs)-1]
			only := &Keyring{ids: []string{last}, aeads: k.aeads}
			if _, err := only.Open([]byte("k"), k.Seal([]byte("k"), []byte("v"))); err != nil {
				t.Fatalf("value not sealed by the last key %q: %v", last, err)
			}
		})
	}
}

func TestParseKeyringErrors(t *testing.T) {
	key, b1 := testKey(1)
	short := base64.StdEncoding.EncodeToString(key[:31])
	long := base64.StdEncoding.EncodeToString(append(key, 0))
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", "no keys"},
		{"comments only", "# nothing\n\n", "no keys"},
		{"key without id", b1, "entry 1: want id:base64key"},
		{"empty id", ":" + b1, "entry 1: key id must be"},
		{"bad id character", "a/b:" + b1, "entry 1: key id must be"},
		{"id too long", strings.Repeat("x", 33) + ":" + b1, "entry 1: key id must be"},
		{"key and id swapped", b1 + ":a", "entry 1: key id must be"},
		{"duplicate id", "a:" + b1 + ",b:" + b1 + ",a:" + b1, `entry 3: duplicate key id "a"`},
		{"short key", "a:" + short, `key "a": key is 31 bytes, want 32`},
		{"long key", "a:" + long, `key "a": key is 33 bytes, want 32`},
		{"not base64", "a:" + b1[:20] + "!" + b1[21:], `key "a": key is not valid base64`},
		{"second entry bad", "a:" + b1 + "\nb:", `key "b": key is 0 bytes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKeyring(tt.in)
			if err == nil {
				t.Fatalf("ParseKeyring = %v, want an error", k)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "cache: ") || !strings.Contains(msg, tt.want) {
				t.Errorf("error %q, want the cache: prefix and %q", msg, tt.want)
			}
			for _, secret := range []string{b1[:8], short[:8], long[:8], b1[20:28]} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q contains key material %q", msg, secret)
				}
			}
		})
	}
}

func TestKeyringRedacts(t *testing.T) {
	key, b1 := testKey(7)
	_, b2 := testKey(8)
	k := mustKeyring(t, "old:"+b1+",new:"+b2)
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("keys", "keyring", k)
	for _, out := range []string{
		k.String(), fmt.Sprintf("%v %+v %#v %s", k, k, k, k), logged.String(),
	} {
		if !strings.Contains(out, "old") || !strings.Contains(out, "new") {
			t.Errorf("%q does not name the key ids", out)
		}
		for _, secret := range []string{b1[:8], b2[:8], string(key[:8]), fmt.Sprint(key[:4])} {
			if strings.Contains(out, secret) {
				t.Errorf("%q contains key material", out)
			}
		}
	}
}

func TestSealRoundTrip(t *testing.T) {
	_, b1 := testKey(1)
	k := mustKeyring(t, "k1:"+b1)
	aad := []byte("qtb:tok:t:{abc}")
	for _, plaintext := range [][]byte{nil, {}, []byte("token"), bytes.Repeat([]byte{0, 0xff}, 1<<15)} {
		sealed := k.Seal(aad, plaintext)
		if want := 2 + len("k1") + 12 + len(plaintext) + 16; len(sealed) != want {
			t.Errorf("len(sealed) = %d, want %d", len(sealed), want)
		}
		if len(plaintext) > 4 && bytes.Contains(sealed, plaintext[:5]) {
			t.Errorf("sealed value contains the plaintext")
		}
		got, err := k.Open(aad, sealed)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, plaintext) {
			t.Fatalf("Open = %q, want %q", abbrev(got), abbrev(plaintext))
		}
	}
	a, b := k.Seal(aad, []byte("same")), k.Seal(aad, []byte("same"))
	if bytes.Equal(a, b) {
		t.Error("two seals of one plaintext are equal: nonce not random")
	}
}

func TestSealRotation(t *testing.T) {
	_, b1 := testKey(1)
	_, b2 := testKey(2)
	_, b3 := testKey(3)
	aad := []byte("qtb:tok:t:{abc}")
	v1 := mustKeyring(t, "v1:"+b1)
	v12 := mustKeyring(t, "v1:"+b1+"\nv2:"+b2)
	v2 := mustKeyring(t, "v2:"+b2)

	old := v1.Seal(aad, []byte("old token"))
	if got, err := v12.Open(aad, old); err != nil || string(got) != "old token" {
		t.Fatalf("after appending a key, Open(old value) = %q, %v", got, err)
	}

	fresh := v12.Seal(aad, []byte("new token"))
	if id := string(fresh[2 : 2+fresh[1]]); id != "v2" {
		t.Fatalf("new value sealed with %q, want the newest key v2", id)
	}
	if got, err := v2.Open(aad, fresh); err != nil || string(got) != "new token" {
		t.Fatalf("Open(new value) with only v2 = %q, %v", got, err)
	}
	if _, err := v1.Open(aad, fresh); !errors.Is(err, ErrUnsealUnknownKey) {
		t.Fatalf("a replica without v2: Open = %v, want ErrUnsealUnknownKey", err)
	}
	if _, err := v2.Open(aad, old); !errors.Is(err, ErrUnsealUnknownKey) {
		t.Fatalf("after removing v1: Open(old value) = %v, want ErrUnsealUnknownKey", err)
	}

	// Same id, different key bytes: not unknown, but unauthentic.
	swapped := mustKeyring(t, "v1:"+b3)
	if _, err := swapped.Open(aad, old); !errors.Is(err, ErrUnsealTampered) {
		t.Fatalf("Open under a replaced key = %v, want ErrUnsealTampered", err)
	}
}

func TestOpenRejects(t *testing.T) {
	_, b1 := testKey(1)
	_, b2 := testKey(2)
	k := mustKeyring(t, "a1:"+b1+",b2:"+b2)
	aad := []byte("qtb:tok:t:{abc}")
	plaintext := []byte("0123456789abcdef")
	sealed := k.Seal(aad, plaintext) // header 4 bytes, nonce 12, ciphertext 16, tag 16

	set := func(i int, v byte) []byte {
		b := bytes.Clone(sealed)
		b[i] = v
		return b
	}
	flip := func(i int) []byte { return set(i, sealed[i]^0x80) }
	tests := []struct {
		name  string
		aad   []byte
		value []byte
		want  error
	}{
		{"version zero", aad, set(0, 0), ErrUnsealMalformed},
		{"version two", aad, set(0, 2), ErrUnsealMalformed},
		{"version flipped", aad, flip(0), ErrUnsealMalformed},
		{"id length zero", aad, set(1, 0), ErrUnsealMalformed},
		{"id length too long", aad, set(1, 33), ErrUnsealMalformed},
		{"id length beyond value", aad, set(1, 32), ErrUnsealMalformed},
		{"id length shorter", aad, set(1, 1), ErrUnsealUnknownKey},
		{"id length longer", aad, set(1, 3), ErrUnsealUnknownKey},
		{"id byte", aad, flip(2), ErrUnsealUnknownKey},
		{"id last byte", aad, flip(3), ErrUnsealUnknownKey},
		{"id turned into another valid id", aad, append([]byte{1, 2, 'a', '1'}, sealed[4:]...), ErrUnsealTampered},
		{"wrong aad", []byte("qtb:tok:t:{abd}"), sealed, ErrUnsealTampered},
		{"empty aad", nil, sealed, ErrUnsealTampered},
		{"appended byte", aad, append(bytes.Clone(sealed), 0), ErrUnsealTampered},
		{"empty", aad, nil, ErrUnsealMalformed},
		{"version only", aad, []byte{1}, ErrUnsealMalformed},
		{"header only", aad, sealed[:4], ErrUnsealMalformed},
		{"no room for tag", aad, sealed[:4+12+15], ErrUnsealMalformed},
		{"no plaintext left", aad, sealed[:4+12+16], ErrUnsealTampered},
		{"garbage", aad, []byte("eyJhbGciOiJIUzI1NiJ9.not-sealed.at-all-really"), ErrUnsealMalformed},
		{"unsealed JSON", aad, []byte(`{"access_token":"x","expires_in":3600}`), ErrUnsealMalformed},
	}
	for i := 4; i < len(sealed); i++ {
		region := "nonce"
		switch {
		case i >= 4+12+16:
			region = "tag"
		case i >= 4+12:
			region = "ciphertext"
		}
		tests = append(tests, struct {
			name  string
			aad   []byte
			value []byte
			want  error
		}{fmt.Sprintf("%s byte %d", region, i), aad, flip(i), ErrUnsealTampered})
	}
	for n := range len(sealed) {
		want := ErrUnsealMalformed
		if n >= 4+12+16 {
			want = ErrUnsealTampered
		}
		tests = append(tests, struct {
			name  string
			aad   []byte
			value []byte
			want  error
		}{fmt.Sprintf("truncated to %d", n), aad, sealed[:n], want})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := k.Open(tt.aad, tt.value)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open = %q, %v; want %v", got, err, tt.want)
			}
			if got != nil {
				t.Fatalf("Open returned %q with an error", got)
			}
		})
	}
	if got, err := k.Open(aad, sealed); err != nil || !bytes.Equal(got, plaintext) {
		t.Fatalf("the original no longer opens: %q, %v", got, err)
	}
}

func TestUnsealReason(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{ErrUnsealUnknownKey, "unknown_key"},
		{ErrUnsealTampered, "tampered"},
		{ErrUnsealMalformed, "malformed"},
		{fmt.Errorf("broker: token: %w", ErrUnsealTampered), "tampered"},
		{nil, ""},
		{ErrMiss, ""},
	} {
		if got := UnsealReason(tt.err); got != tt.want {
			t.Errorf("UnsealReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestNameKey(t *testing.T) {
	k1, b1 := testKey(1)
	_, b2 := testKey(2)
	_, b3 := testKey(3)
	a := mustKeyring(t, "a:"+b1).NameKey()
	ab := mustKeyring(t, "a:"+b1+",b:"+b2).NameKey()
	abc := mustKeyring(t, "a:"+b1+",b:"+b2+",c:"+b3).NameKey()
	bc := mustKeyring(t, "b:"+b2+",c:"+b3).NameKey()

	if len(a) != 32 {
		t.Fatalf("len(NameKey) = %d, want 32", len(a))
	}
	if !bytes.Equal(a, ab) || !bytes.Equal(a, abc) {
		t.Error("appending a key changed NameKey")
	}
	if bytes.Equal(a, bc) {
		t.Error("removing the oldest key kept NameKey")
	}
	if bytes.Equal(a, k1) {
		t.Error("NameKey is the raw oldest key")
	}
	k := mustKeyring(t, "a:"+b1)
	k.NameKey()[0] ^= 0xff
	if !bytes.Equal(k.NameKey(), a) {
		t.Error("NameKey returned the keyring's own slice")
	}
}

// FuzzOpen checks that Open never panics and that nothing opens except a
// value Seal produced, under the aad it was sealed with. Seal's nonces are
// random and the fuzzing workers are other processes, so what is checked is
// that an opened value is an (aad, plaintext) pair that was sealed.
func FuzzOpen(f *testing.F) {
	_, b1 := testKey(1)
	_, b2 := testKey(2)
	k := mustKeyring(f, "old:"+b1+",new:"+b2)
	oldOnly := mustKeyring(f, "old:"+b1)

	type sealedValue struct{ aad, plaintext string }
	genuine := map[sealedValue]bool{}
	add := func(kr *Keyring, aad, plaintext string) []byte {
		s := kr.Seal([]byte(aad), []byte(plaintext))
		genuine[sealedValue{aad, plaintext}] = true
		f.Add([]byte(aad), s)
		return s
	}
	s := add(k, "qtb:tok:t:{abc}", "token")
	add(oldOnly, "qtb:tok:t:{abc}", "old token")
	add(k, "", "")
	f.Add([]byte("qtb:tok:t:{abd}"), s)
	f.Add([]byte("qtb:tok:t:{abc}"), s[:len(s)-1])
	f.Add([]byte("qtb:tok:t:{abc}"), append([]byte{1, 3, 'n', 'e', 'x'}, s[5:]...))
	f.Add([]byte("k"), []byte{})
	f.Add([]byte("k"), []byte{1, 0})
	f.Add([]byte("k"), []byte{1, 255, 'a'})
	f.Add([]byte("k"), []byte("not a sealed value at all, but long enough"))

	f.Fuzz(func(t *testing.T, aad, value []byte) {
		got, err := k.Open(aad, value)
		if err != nil {
			if got != nil {
				t.Fatalf("Open returned %q with error %v", got, err)
			}
			if UnsealReason(err) == "" {
				t.Fatalf("Open error %v has no UnsealReason", err)
			}
			return
		}
		if !genuine[sealedValue{string(aad), string(got)}] {
			t.Fatalf("Open(%q, %x) = %q: no such value was sealed under that aad", aad, value, got)
		}
	})
}
