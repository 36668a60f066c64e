package cache

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func TestMemoryConformance(t *testing.T) {
	runConformance(t, func(t *testing.T, now func() time.Time) store {
		m := NewMemory(MemoryOptions{Now: now})
		t.Cleanup(func() { _ = m.Close() })
		return m
	})
}

func TestNewMemoryDefaults(t *testing.T) {
	m := NewMemory(MemoryOptions{MaxEntries: -1})
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
	m := NewMemory(MemoryOptions{MaxEntries: 3, Now: clock.Now})

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
	m := NewMemory(MemoryOptions{MaxEntries: 4, Now: clock.Now})
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
	m := NewMemory(MemoryOptions{Now: clock.Now})
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
	m := NewMemory(MemoryOptions{})
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
	m := NewMemory(MemoryOptions{MaxEntries: maxEntries, Now: clock.Now})
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

func checkMemoryInvariants(t *testing.T, m *Memory, maxEntries int) {
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
		if i > 0 && e.expires.Before(m.byExp[(i-1)/2].expires) {
			t.Fatalf("heap order broken at %d", i)
		}
	}
}
