package cache

import (
	"container/heap"
	"context"
	"fmt"
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

// Memory is the in-process store, used when no Redis is configured. It is
// bounded: at MaxEntries, expired entries are dropped first, then the entry
// closest to expiry is evicted, which for a token cache is the one worth the
// least. Expiry is lazy, so there is no background goroutine. Memory is safe
// for concurrent use.
type Memory struct {
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
	byExp   expiryHeap // the same entries, soonest expiry first
}

type entry struct {
	key     string
	value   []byte
	expires time.Time
	index   int // position in byExp
}

// NewMemory returns an empty Memory.
func NewMemory(opts MemoryOptions) *Memory {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Memory{
		max:     opts.MaxEntries,
		now:     opts.Now,
		entries: make(map[string]*entry),
	}
}

// Get returns a copy of the value stored under key, or ErrMiss when it is
// absent or expired.
func (m *Memory) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cache: memory get: %w", err)
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[key]
	if !ok {
		return nil, ErrMiss
	}
	if !now.Before(e.expires) {
		m.remove(e)
		return nil, ErrMiss
	}
	return append([]byte{}, e.value...), nil
}

// Set stores a copy of value under key for ttl, replacing any previous value.
// A ttl <= 0 returns ErrInvalidTTL and stores nothing.
func (m *Memory) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if ttl <= 0 {
		return ErrInvalidTTL
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cache: memory set: %w", err)
	}
	now := m.now()
	expires := now.Add(ttl)
	value = append([]byte{}, value...)

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
	e := &entry{key: key, value: value, expires: expires}
	m.entries[key] = e
	heap.Push(&m.byExp, e)
	return nil
}

// Delete removes key. Deleting an absent key is not an error.
func (m *Memory) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cache: memory delete: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[key]; ok {
		m.remove(e)
	}
	return nil
}

// Len returns the number of unexpired entries.
func (m *Memory) Len() int {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropExpired(now)
	return len(m.entries)
}

// Close drops every entry. Memory holds no goroutines or connections; Close
// exists so that Memory and Redis share a lifecycle.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.entries)
	m.byExp = nil
	return nil
}

// dropExpired removes every entry expired at now. Expired entries are the
// soonest to expire, so they sit at the top of the heap.
func (m *Memory) dropExpired(now time.Time) {
	for len(m.byExp) > 0 && !now.Before(m.byExp[0].expires) {
		m.remove(m.byExp[0])
	}
}

func (m *Memory) remove(e *entry) {
	heap.Remove(&m.byExp, e.index)
	delete(m.entries, e.key)
}

// expiryHeap is a min-heap of entries by expiry time.
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *expiryHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	return e
}
