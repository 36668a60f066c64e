package broker

import (
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"strings"
	"sync"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// Key names are shared by replicas of different versions during an
// upgrade: TestKeyNamesAreStable pins them byte for byte.

// keys are the Redis names of one user's entries; they share a hash tag,
// so they live in one Cluster slot. Only the token's name is kept (it is
// remembered for every cached user); the lease name is only needed on a
// miss, so it is built then.
type keys struct {
	token string // qtb:tok:<tenant>:{<hash>}
}

// lease is qtb:lock:<tenant>:{<hash>}.
func (k keys) lease() string { return "qtb:lock:" + strings.TrimPrefix(k.token, "qtb:tok:") }

// keysFor names the cache entries of one user of one client at one tenant.
// The user value is HMACed (with the keyring's name key when sealing is on)
// so no raw identifier reaches the store. Names are remembered: a user asks
// many times per token lifetime, and the HMAC was 7% of an L1 hit's CPU.
func (b *Broker) keysFor(up *upstream, user qlik.UserLookup) keys {
	g := nameGroup{tenant: up.tenant.ID, client: up.tenant.Credentials.ClientID, scope: up.tenant.Scope, field: user.Field}
	if k, ok := b.names.get(g, user.Value); ok {
		return k
	}
	name := append(append(make([]byte, 0, 8+len(up.tenant.ID)+hashTagLen), "qtb:tok:"...), up.tenant.ID...)
	k := keys{token: string(b.appendHashTag(name, up.tenant.Credentials.ClientID, user.Field, user.Value, up.tenant.Scope))}
	b.names.put(g, user.Value, k)
	return k
}

// nameGroup is what the users of one tenant's client share in their key
// names; the user value tells them apart.
type nameGroup struct{ tenant, client, scope, field string }

// nameCache remembers key names. It is bounded like L1 and simply starts
// over when full: a name costs one HMAC to derive again. Names are held
// per group, by user value: a map entry per cached user of two strings
// (32 bytes) rather than of the five strings of the group and the value
// (96), which was 14% of a cached user's heap.
type nameCache struct {
	max int
	mu  sync.RWMutex
	n   int                             // names held
	m   map[nameGroup]map[string]string // user value -> token key name
}

func (c *nameCache) get(g nameGroup, value string) (keys, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	name, ok := c.m[g][value]
	return keys{token: name}, ok
}

func (c *nameCache) put(g nameGroup, value string, k keys) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || c.n >= c.max {
		c.m, c.n = make(map[nameGroup]map[string]string), 0
	}
	users := c.m[g]
	if users == nil {
		users = make(map[string]string)
		c.m[g] = users
	}
	if _, ok := users[value]; !ok {
		c.n++
	}
	users[value] = k.token
}

// hashTagLen is the length of a hash tag: ":{" + base64 of 32 bytes + "}".
const hashTagLen = 2 + 43 + 1

// hashTag is ":{<HMAC of parts>}", the part of a key name that identifies
// a user without revealing them, and pins their keys to one Cluster slot.
func (b *Broker) hashTag(parts ...string) string {
	var buf [hashTagLen]byte
	return string(b.appendHashTag(buf[:0], parts...))
}

// appendHashTag appends hashTag(parts...) to dst. The HMAC states are
// pooled.
func (b *Broker) appendHashTag(dst []byte, parts ...string) []byte {
	h := b.hmacs.Get().(hash.Hash)
	defer b.hmacs.Put(h)
	h.Reset()
	// One Write of the parts, each ended by a 0 byte: writing them one by
	// one would copy each string (hmac has no WriteString).
	var buf [256]byte
	msg := buf[:0]
	for _, part := range parts {
		msg = append(append(msg, part...), 0)
	}
	h.Write(msg)
	var sum [sha256.Size]byte
	dst = append(dst, ":{"...)
	dst = base64.RawURLEncoding.AppendEncode(dst, h.Sum(sum[:0]))
	return append(dst, '}')
}

// emailKey names the cached Qlik user id of an email at a tenant:
// qtb:email:<tenant>:{<hash>}.
func (b *Broker) emailKey(up *upstream, email string) string {
	return "qtb:email:" + up.tenant.ID + b.hashTag(up.tenant.Credentials.ClientID, email)
}

// cooldownKey is where the replicas share a tenant's cooldown after a 429.
func cooldownKey(tenant string) string { return "qtb:cooldown:" + tenant }

// rateKey names the tenant's shared rate limit.
func rateKey(tenant string) string { return "qtb:rate:" + tenant }
