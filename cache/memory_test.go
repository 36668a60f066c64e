package cache

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// byteMemory is a Memory of byte slices behind the store interface, so the
// conformance suite checks Memory's expiry, overwrite and delete behaviour
// with the same cases as Redis. Memory holds values as given; copying them
// in and out is this adapter's part of the store contract.
type byteMemory struct{ *Memory[[]byte] }

func (m byteMemory) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cache: memory get: %w", err)
	}
	v, ok := m.Memory.Get(key)
	if !ok {
		return nil, ErrMiss
	}
	return append([]byte{}, v...), nil
}

func (m byteMemory) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cache: memory set: %w", err)
	}
	return m.Memory.Set(key, append([]byte{}, value...), ttl)
}

func (m byteMemory) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cache: memory delete: %w", err)
	}
	m.Memory.Delete(key)
	return nil
}

func newByteMemory(opts MemoryOptions) byteMemory {
	return byteMemory{NewMemory[[]byte](opts)}
}

func TestMemoryConformance(t *testing.T) {
	runConformance(t, func(t *testing.T, now func() time.Time) store {
		m := newByteMemory(MemoryOptions{Now: now})
		t.Cleanup(func() { _ = m.Close() })
		return m
	})
}

// TestMemoryHoldsValuesAsGiven: a hit returns the stored value itself, not
// a copy, which is what makes an L1 hit free of allocations.
func TestMemoryHoldsValuesAsGiven(t *testing.T) {
	type tok struct{ s string }
	m := NewMemory[*tok](MemoryOptions{})
	v := &tok{"a"}
	if err := m.Set("k", v, time.Minute); err != nil {
		t.Fatal(err)
	}
	got, ok := m.Get("k")
	if !ok || got != v {
		t.Fatalf("Get = %p, %v; want the stored pointer %p", got, ok, v)
	}
	if allocs := testing.AllocsPerRun(100, func() { m.Get("k") }); allocs != 0 {
		t.Errorf("Get allocates %.0f times per hit, want 0", allocs)
	}
}

func TestNewMemoryDefaults(t *testing.T) {
	m := newByteMemory(MemoryOptions{MaxEntries: -1})
	if m.max != DefaultMaxEntries {
		t.Errorf("max = %d, want %d", m.max, DefaultMaxEntries)
	}
	if m.now == nil {
		t.Fatal("now is nil, want time.Now")
	}
	mustSet(t, m, "k", []byte("v"), time.Hour)
	mustGet(t, m, "k", []byte("v"))
}

func TestMemoryBound(t *testing.T) {
	clock := newFakeClock()
	m := newByteMemory(MemoryOptions{MaxEntries: 3, Now: clock.Now})

	mustSet(t, m, "soon", []byte("1"), time.Minute)
	mustSet(t, m, "late", []byte("2"), time.Hour)
	mustSet(t, m, "mid", []byte("3"), 10*time.Minute)
	clock.Advance(2 * time.Minute) // "soon" has expired

	// Full: the expired entry goes, not a live one.
	mustSet(t, m, "d", []byte("4"), time.Hour)
	if got := m.Len(); got != 3 {
		t.Fatalf("Len = %d, want 3", got)
	}
	mustMiss(t, m, "soon")
	mustGet(t, m, "mid", []byte("3"))

	// Full, nothing expired: the entry closest to expiry ("mid") goes.
	mustSet(t, m, "e", []byte("5"), 2*time.Hour)
	if got := m.Len(); got != 3 {
		t.Fatalf("Len = %d, want 3", got)
	}
	mustMiss(t, m, "mid")
	mustGet(t, m, "late", []byte("2"))
	mustGet(t, m, "d", []byte("4"))
	mustGet(t, m, "e", []byte("5"))

	// Overwriting at the bound evicts nothing.
	mustSet(t, m, "late", []byte("2b"), time.Hour)
	for k, v := range map[string]string{"late": "2b", "d": "4", "e": "5"} {
		mustGet(t, m, k, []byte(v))
	}
}

func TestMemoryBoundDropsAllExpired(t *testing.T) {
	clock := newFakeClock()
	m := newByteMemory(MemoryOptions{MaxEntries: 4, Now: clock.Now})
	for i := range 3 {
		mustSet(t, m, fmt.Sprint("old", i), []byte("x"), time.Minute)
	}
	mustSet(t, m, "live", []byte("y"), time.Hour)
	clock.Advance(time.Minute)

	mustSet(t, m, "new", []byte("z"), time.Hour)
	if got := len(m.entries); got != 2 {
		t.Errorf("entries held = %d, want 2 (all expired ones dropped)", got)
	}
	mustGet(t, m, "live", []byte("y"))
	mustGet(t, m, "new", []byte("z"))
}

func TestMemoryLenExcludesExpired(t *testing.T) {
	clock := newFakeClock()
	m := newByteMemory(MemoryOptions{Now: clock.Now})
	mustSet(t, m, "a", []byte("1"), time.Minute)
	mustSet(t, m, "b", []byte("2"), time.Hour)
	if got := m.Len(); got != 2 {
		t.Fatalf("Len = %d, want 2", got)
	}
	clock.Advance(time.Minute)
	if got := m.Len(); got != 1 {
		t.Fatalf("Len after expiry = %d, want 1", got)
	}
}

func TestMemoryClose(t *testing.T) {
	m := newByteMemory(MemoryOptions{})
	mustSet(t, m, "a", []byte("1"), time.Minute)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := m.Len(); got != 0 {
		t.Fatalf("Len after Close = %d, want 0", got)
	}
}

// TestMemoryRandomOps drives Memory with random operations against a plain
// map model and checks the heap's bookkeeping after each one.
func TestMemoryRandomOps(t *testing.T) {
	const maxEntries = 16
	clock := newFakeClock()
	m := newByteMemory(MemoryOptions{MaxEntries: maxEntries, Now: clock.Now})
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := t.Context()

	for i := range 20_000 {
		key := fmt.Sprint("k", rng.IntN(40))
		switch op := rng.IntN(10); {
		case op < 5:
			ttl := time.Duration(1+rng.IntN(100)) * time.Second
			if err := m.Set(ctx, key, []byte(key), ttl); err != nil {
				t.Fatal(err)
			}
			mustGet(t, m, key, []byte(key))
		case op < 8:
			got, err := m.Get(ctx, key)
			if err == nil && string(got) != key {
				t.Fatalf("op %d: Get(%q) = %q", i, key, got)
			}
		case op < 9:
			if err := m.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			mustMiss(t, m, key)
		default:
			clock.Advance(time.Duration(rng.IntN(20)) * time.Second)
		}
		checkMemoryInvariants(t, m, maxEntries)
	}
}

func checkMemoryInvariants(t *testing.T, m byteMemory, maxEntries int) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.entries) > maxEntries {
		t.Fatalf("%d entries, bound %d", len(m.entries), maxEntries)
	}
	if len(m.entries) != len(m.byExp) {
		t.Fatalf("map holds %d entries, heap %d", len(m.entries), len(m.byExp))
	}
	for i, e := range m.byExp {
		if e.index != i {
			t.Fatalf("heap[%d].index = %d", i, e.index)
		}
		if m.entries[e.key] != e {
			t.Fatalf("heap[%d] (%q) is not the map's entry", i, e.key)
		}
		if i > 0 && e.expires < m.byExp[(i-1)/2].expires {
			t.Fatalf("heap order broken at %d", i)
		}
	}
}

func TestMemorySnapshot(t *testing.T) {
	now := time.Unix(0, 0)
	m := NewMemory[int](MemoryOptions{Now: func() time.Time { return now }})
	_ = m.Set("a", 1, time.Minute)
	_ = m.Set("b", 2, time.Second)
	now = now.Add(2 * time.Second) // b has expired
	keys, values := m.Snapshot()
	if len(keys) != 1 || keys[0] != "a" || values[0] != 1 {
		t.Fatalf("Snapshot = %v %v, want [a] [1]", keys, values)
	}
	m.Delete("a") // the snapshot is a copy
	if keys[0] != "a" || m.Len() != 0 {
		t.Fatal("the snapshot changed with the Memory")
	}
}

// TestMemoryLongTTL: a ttl past the end of the clock's range keeps the
// entry rather than overflowing into the past.
func TestMemoryLongTTL(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := NewMemory[int](MemoryOptions{Now: func() time.Time { return now }})
	now = now.Add(time.Hour)
	if err := m.Set("k", 1, time.Duration(math.MaxInt64)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(100 * 365 * 24 * time.Hour)
	if v, ok := m.Get("k"); !ok || v != 1 {
		t.Fatalf("Get = %d, %v after a century; want 1, true", v, ok)
	}
}
