package cache

import (
	"container/heap"
	"math"
	"sync"
	"time"
)

// DefaultMaxEntries is the bound of a Memory whose MaxEntries is not set.
const DefaultMaxEntries = 100_000

// MemoryOptions configures NewMemory.
type MemoryOptions struct {
	// MaxEntries bounds the number of entries held; DefaultMaxEntries when <= 0.
	MaxEntries int
	// Now is the clock expiry is judged by; time.Now when nil.
	Now func() time.Time
}

// Memory is the in-process store: the broker's L1 in front of Redis, or its
// only cache without Redis. It is bounded: at MaxEntries, expired entries
// are dropped first, then the entry closest to expiry is evicted, which for
// a token cache is the one worth the least. Expiry is lazy, so there is no
// background goroutine. Memory is safe for concurrent use.
//
// Values are held as given, not copied or encoded: a hit on the hot path
// costs a map lookup under a mutex and nothing else (an earlier []byte
// version copied the value on every Get and the caller then decoded it,
// 22% of the bytes a cached token request allocated). Callers must treat
// stored values as immutable. There is no I/O, so there is no context.
type Memory[V any] struct {
	max int
	now func() time.Time
	// epoch is the clock's reading at NewMemory: expiries are held as
	// time since it, 8 bytes instead of a time.Time's 24, in an entry
	// per cached user. Sub keeps the monotonic reading's protection
	// against wall clock steps, as comparing time.Times did.
	epoch time.Time

	mu      sync.Mutex
	entries map[string]*entry[V]
	byExp   expiryHeap[V] // the same entries, soonest expiry first
}

type entry[V any] struct {
	key     string
	value   V
	expires time.Duration // since epoch
	index   int           // position in byExp
}

// NewMemory returns an empty Memory.
func NewMemory[V any](opts MemoryOptions) *Memory[V] {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Memory[V]{
		max:     opts.MaxEntries,
		now:     opts.Now,
		epoch:   opts.Now(),
		entries: make(map[string]*entry[V]),
	}
}

// Get returns the value stored under key; ok is false when it is absent or
// expired.
func (m *Memory[V]) Get(key string) (value V, ok bool) {
	now := m.since(m.now())
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[key]
	if !ok {
		return value, false
	}
	if now >= e.expires {
		m.remove(e)
		return value, false
	}
	return e.value, true
}

// Set stores value under key for ttl, replacing any previous value. A
// ttl <= 0 returns ErrInvalidTTL and stores nothing.
func (m *Memory[V]) Set(key string, value V, ttl time.Duration) error {
	if ttl <= 0 {
		return ErrInvalidTTL
	}
	now := m.since(m.now())
	expires := now + min(ttl, math.MaxInt64-max(now, 0)) // saturated

	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[key]; ok {
		e.value, e.expires = value, expires
		heap.Fix(&m.byExp, e.index)
		return nil
	}
	if len(m.entries) >= m.max {
		m.dropExpired(now)
	}
	if len(m.entries) >= m.max {
		m.remove(m.byExp[0])
	}
	e := &entry[V]{key: key, value: value, expires: expires}
	m.entries[key] = e
	heap.Push(&m.byExp, e)
	return nil
}

// Delete removes key. Deleting an absent key is not an error.
func (m *Memory[V]) Delete(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[key]; ok {
		m.remove(e)
	}
}

// Len returns the number of unexpired entries.
func (m *Memory[V]) Len() int {
	now := m.since(m.now())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropExpired(now)
	return len(m.entries)
}

// Close drops every entry. Memory holds no goroutines or connections; Close
// exists so that Memory and Redis share a lifecycle.
func (m *Memory[V]) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.entries)
	m.byExp = nil
	return nil
}

// dropExpired removes every entry expired at now. Expired entries are the
// soonest to expire, so they sit at the top of the heap.
func (m *Memory[V]) dropExpired(now time.Duration) {
	for len(m.byExp) > 0 && now >= m.byExp[0].expires {
		m.remove(m.byExp[0])
	}
}

// since is t as the time since epoch (saturated at the Duration range).
func (m *Memory[V]) since(t time.Time) time.Duration { return t.Sub(m.epoch) }

func (m *Memory[V]) remove(e *entry[V]) {
	heap.Remove(&m.byExp, e.index)
	delete(m.entries, e.key)
}

// expiryHeap is a min-heap of entries by expiry time.
type expiryHeap[V any] []*entry[V]

func (h expiryHeap[V]) Len() int           { return len(h) }
func (h expiryHeap[V]) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap[V]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *expiryHeap[V]) Push(x any) {
	e := x.(*entry[V])
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *expiryHeap[V]) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	return e
}

// Snapshot returns the unexpired entries' keys and values, copied under
// the lock so that the caller may take its time over them (and call into
// the Memory) without holding anything.
func (m *Memory[V]) Snapshot() (keys []string, values []V) {
	now := m.since(m.now())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropExpired(now)
	keys, values = make([]string, 0, len(m.entries)), make([]V, 0, len(m.entries))
	for k, e := range m.entries {
		keys, values = append(keys, k), append(values, e.value)
	}
	return keys, values
}
