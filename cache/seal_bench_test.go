package cache

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// benchTokenValue is about what the broker stores per user: a ~600-byte
// ES384 access token with its type, scope and expiry, JSON encoded.
var benchTokenValue = bytes.Repeat([]byte("x"), 700)

// benchAAD is a key name as the broker makes them.
var benchAAD = []byte("qtb:tok:default:{bWVhc3VyZWQtYnktdGhlLWJlbmNobWFyaw-only-a-name}")

func benchKeyring(b *testing.B, ids ...string) *Keyring {
	b.Helper()
	var entries []string
	for i, id := range ids {
		entries = append(entries, id+":"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{byte(i + 1)}, 32)))
	}
	k, err := ParseKeyring(strings.Join(entries, ","))
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// BenchmarkSeal measures sealing one token value for Redis (AES-256-GCM,
// random nonce).
func BenchmarkSeal(b *testing.B) {
	k := benchKeyring(b, "k1")
	b.SetBytes(int64(len(benchTokenValue)))
	b.ReportAllocs()
	for b.Loop() {
		_ = k.Seal(benchAAD, benchTokenValue)
	}
}

// BenchmarkOpen measures opening one sealed token value, under the newest
// key and, during a rotation, under an older one.
func BenchmarkOpen(b *testing.B) {
	for _, bc := range []struct {
		name     string
		sealWith []string // keyring that sealed
	}{
		{"NewestKey", []string{"k1", "k2"}},
		{"OlderKey", []string{"k1"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			sealed := benchKeyring(b, bc.sealWith...).Seal(benchAAD, benchTokenValue)
			k := benchKeyring(b, "k1", "k2")
			b.SetBytes(int64(len(benchTokenValue)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := k.Open(benchAAD, sealed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
