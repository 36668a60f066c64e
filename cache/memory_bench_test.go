package cache

import (
	"strconv"
	"testing"
	"time"
)

// BenchmarkMemoryGet measures an L1 hit: a map lookup under the mutex, with
// 10k entries cached.
func BenchmarkMemoryGet(b *testing.B) {
	m, keys := benchMemory(b, 10_000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := m.Get(keys[i%len(keys)]); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// BenchmarkMemoryGetParallel is BenchmarkMemoryGet from GOMAXPROCS
// goroutines: the one mutex is shared by every request of the process.
func BenchmarkMemoryGetParallel(b *testing.B) {
	m, keys := benchMemory(b, 10_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := m.Get(keys[i%len(keys)]); !ok {
				b.Error("miss")
				return
			}
			i++
		}
	})
}

func benchMemory(b *testing.B, n int) (*Memory[[]byte], []string) {
	b.Helper()
	m := NewMemory[[]byte](MemoryOptions{})
	b.Cleanup(func() { m.Close() })
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "qtb:tok:default:{" + strconv.Itoa(i) + "}"
		if err := m.Set(keys[i], benchTokenValue, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	return m, keys
}
