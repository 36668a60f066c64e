package cache

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// Errors returned by Keyring.Open. UnsealReason maps them to metric labels.
var (
	// ErrUnsealUnknownKey means the value names a key id the keyring does
	// not hold: it was sealed under a key since removed, or by a replica
	// with a newer keyring.
	ErrUnsealUnknownKey = errors.New("cache: unseal: unknown key id")
	// ErrUnsealTampered means authentication failed: the value was altered,
	// or was sealed for another Redis key and copied here.
	ErrUnsealTampered = errors.New("cache: unseal: authentication failed")
	// ErrUnsealMalformed means the value is not a sealed value at all: too
	// short, or of an unknown format version.
	ErrUnsealMalformed = errors.New("cache: unseal: malformed value")
)

const (
	sealVersion = 1
	// sealKeyLen is the AES-256 key size.
	sealKeyLen = 32
	// maxKeyIDLen bounds key ids. It is below the 43 characters of a 32-byte
	// key in unpadded base64, so an error quoting a valid id never quotes a
	// key pasted in the wrong place.
	maxKeyIDLen = 32
	// sealOverhead is the GCM nonce and tag that follow the header.
	sealOverhead = 12 + 16
	// nameKeyInfo is the HKDF info deriving the key-name HMAC key.
	nameKeyInfo = "qlik-token-broker key names v1"
)

// Keyring seals values at rest with AES-256-GCM under the newest of its
// keys and opens values sealed under any of them, so keys can be rotated
// without invalidating the cache: append a new key to every replica's
// keyring, and once no value sealed under the oldest key can be alive (the
// longest cache TTL later), remove it.
//
// A sealed value is
//
//	version (1 byte, 1) | id length (1 byte) | key id | nonce (12 bytes) | ciphertext | GCM tag (16 bytes)
//
// with the nonce random per value. The GCM additional data is the header
// (version, id length, id) followed by the caller's aad, the Redis key name,
// so a value copied under another key name does not open.
//
// A Keyring is immutable and safe for concurrent use. Its String, GoString
// and LogValue show key ids only.
type Keyring struct {
	ids     []string // oldest..newest
	aeads   map[string]cipher.AEAD
	nameKey []byte
}

// ParseKeyring parses a keyring from "id1:base64key1,id2:base64key2", or
// from the same entries one per line as in a mounted secret file, where
// blank lines and '#' comments are ignored. Entries are listed oldest
// first: the last is the newest key and seals, every one opens.
//
// Keys are 32 bytes in standard or URL-safe base64, padded or not. Ids are
// 1 to 32 characters of [A-Za-z0-9_.-] and unique. Errors name entries by
// position or id and never contain key material.
func ParseKeyring(s string) (*Keyring, error) {
	k := &Keyring{aeads: make(map[string]cipher.AEAD)}
	var keys [][]byte
	n := 0
	for line := range strings.Lines(s) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i] // '#' is in neither the id nor the base64 alphabet
		}
		for field := range strings.SplitSeq(line, ",") {
			field = strings.TrimSpace(field)
			if field == "" {
				continue
			}
			n++
			id, encoded, ok := strings.Cut(field, ":")
			if !ok {
				return nil, fmt.Errorf("cache: keyring entry %d: want id:base64key", n)
			}
			id, encoded = strings.TrimSpace(id), strings.TrimSpace(encoded)
			if !validKeyID(id) {
				return nil, fmt.Errorf("cache: keyring entry %d: key id must be 1 to %d characters of A-Z a-z 0-9 _ . -", n, maxKeyIDLen)
			}
			if _, dup := k.aeads[id]; dup {
				return nil, fmt.Errorf("cache: keyring entry %d: duplicate key id %q", n, id)
			}
			key, err := decodeKey(encoded)
			if err != nil {
				return nil, fmt.Errorf("cache: keyring key %q: %w", id, err)
			}
			block, err := aes.NewCipher(key)
			if err != nil {
				return nil, fmt.Errorf("cache: keyring key %q: %w", id, err)
			}
			aead, err := cipher.NewGCMWithRandomNonce(block)
			if err != nil {
				return nil, fmt.Errorf("cache: keyring key %q: %w", id, err)
			}
			k.ids = append(k.ids, id)
			k.aeads[id] = aead
			keys = append(keys, key)
		}
	}
	if len(k.ids) == 0 {
		return nil, errors.New("cache: keyring has no keys")
	}
	nameKey, err := hkdf.Key(sha256.New, keys[0], nil, nameKeyInfo, sealKeyLen)
	if err != nil {
		return nil, fmt.Errorf("cache: keyring: derive name key: %w", err)
	}
	k.nameKey = nameKey
	return k, nil
}

// decodeKey accepts the four base64 flavours; which one was meant is
// unambiguous for 32 bytes of input. Its errors quote nothing of s.
func decodeKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding,
		base64.URLEncoding, base64.RawURLEncoding,
	} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != sealKeyLen {
				return nil, fmt.Errorf("key is %d bytes, want %d", len(b), sealKeyLen)
			}
			return b, nil
		}
	}
	return nil, errors.New("key is not valid base64")
}

func validKeyID(id string) bool {
	if id == "" || len(id) > maxKeyIDLen {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// Seal encrypts plaintext under the newest key, bound to aad, which must
// be the Redis key name the value is stored under.
func (k *Keyring) Seal(aad, plaintext []byte) []byte {
	id := k.ids[len(k.ids)-1]
	aead := k.aeads[id]
	header := sealHeader(id)
	out := make([]byte, len(header), len(header)+aead.Overhead()+len(plaintext))
	copy(out, header)
	return aead.Seal(out, nil, plaintext, additionalData(header, aad))
}

// Open authenticates and decrypts a value made by Seal with the same aad,
// under any key in the keyring. Errors are ErrUnsealMalformed,
// ErrUnsealUnknownKey or ErrUnsealTampered.
func (k *Keyring) Open(aad, sealed []byte) ([]byte, error) {
	if len(sealed) < 2 || sealed[0] != sealVersion {
		return nil, ErrUnsealMalformed
	}
	idLen := int(sealed[1])
	if idLen == 0 || idLen > maxKeyIDLen || len(sealed) < 2+idLen+sealOverhead {
		return nil, ErrUnsealMalformed
	}
	header, body := sealed[:2+idLen], sealed[2+idLen:]
	aead, ok := k.aeads[string(header[2:])]
	if !ok {
		return nil, ErrUnsealUnknownKey
	}
	plaintext, err := aead.Open(nil, nil, body, additionalData(header, aad))
	if err != nil {
		return nil, ErrUnsealTampered
	}
	return plaintext, nil
}

// UnsealReason returns the metric label for an error from Open:
// "unknown_key", "tampered" or "malformed"; "" for any other error.
func UnsealReason(err error) string {
	switch {
	case errors.Is(err, ErrUnsealUnknownKey):
		return "unknown_key"
	case errors.Is(err, ErrUnsealTampered):
		return "tampered"
	case errors.Is(err, ErrUnsealMalformed):
		return "malformed"
	}
	return ""
}

// NameKey returns a 32-byte key for HMACing cache key names, so Redis
// never sees user ids. It is HKDF-SHA256 of the OLDEST key with info
// "qlik-token-broker key names v1": appending a new sealing key keeps every
// key name, while removing the oldest key renames every entry, which then
// misses once and is fetched again. Rotation therefore drops the oldest key
// only when a cold cache is acceptable.
func (k *Keyring) NameKey() []byte { return append([]byte(nil), k.nameKey...) }

// String lists the key ids, oldest first, marking the sealing key.
func (k *Keyring) String() string {
	return "cache.Keyring{ids: " + strings.Join(k.ids, ",") + "; seals with: " + k.ids[len(k.ids)-1] + "}"
}

// GoString is String, so %#v shows no key bytes either.
func (k *Keyring) GoString() string { return k.String() }

// LogValue is String, for slog.
func (k *Keyring) LogValue() slog.Value { return slog.StringValue(k.String()) }

func sealHeader(id string) []byte {
	return append([]byte{sealVersion, byte(len(id))}, id...)
}

// additionalData binds the header as well as the key name, so no future
// format can be confused with this one.
func additionalData(header, aad []byte) []byte {
	return append(append(make([]byte, 0, len(header)+len(aad)), header...), aad...)
}
