package cache

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// BenchmarkMemoryGet measures an L1 hit: a map lookup under the mutex and a
// copy of the value, with 10k entries cached.
func BenchmarkMemoryGet(b *testing.B) {
	m, keys := benchMemory(b, 10_000)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := m.Get(ctx, keys[i%len(keys)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkMemoryGetParallel is BenchmarkMemoryGet from GOMAXPROCS
// goroutines: the one mutex is shared by every request of the process.
func BenchmarkMemoryGetParallel(b *testing.B) {
	m, keys := benchMemory(b, 10_000)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := m.Get(ctx, keys[i%len(keys)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func benchMemory(b *testing.B, n int) (*Memory, []string) {
	b.Helper()
	m := NewMemory(MemoryOptions{})
	b.Cleanup(func() { m.Close() })
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "qtb:tok:default:{" + strconv.Itoa(i) + "}"
		if err := m.Set(context.Background(), keys[i], benchTokenValue, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	return m, keys
}
