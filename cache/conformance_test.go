package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
)

// newFakeClock returns a clock tests move by hand, at a fixed start.
func newFakeClock() *clocktest.Clock {
	return clocktest.New(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
}

// runConformance runs the behaviour every store must share. newStore returns
// an empty store that judges expiry by now (if it can be told the time) and
// is closed when t ends.
func runConformance(t *testing.T, newStore func(t *testing.T, now func() time.Time) store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s store, clock *clocktest.Clock)
	}{
		{"Miss", testMiss},
		{"RoundTrip", testRoundTrip},
		{"GetReturnsCopy", testGetReturnsCopy},
		{"SetStoresCopy", testSetStoresCopy},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"DeleteAbsent", testDeleteAbsent},
		{"InvalidTTL", testInvalidTTL},
		{"Expiry", testExpiry},
		{"OverwriteResetsTTL", testOverwriteResetsTTL},
		{"BinaryValue", testBinaryValue},
		{"EmptyValue", testEmptyValue},
		{"LargeValue", testLargeValue},
		{"Concurrent", testConcurrent},
		{"CancelledContext", testCancelledContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			tt.run(t, newStore(t, clock.Now), clock)
		})
	}
}

func mustSet(t *testing.T, s store, key string, value []byte, ttl time.Duration) {
	t.Helper()
	if err := s.Set(t.Context(), key, value, ttl); err != nil {
		t.Fatalf("Set(%q): %v", key, err)
	}
}

func mustGet(t *testing.T, s store, key string, want []byte) {
	t.Helper()
	got, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %q, want %q", key, abbrev(got), abbrev(want))
	}
}

func mustMiss(t *testing.T, s store, key string) {
	t.Helper()
	got, err := s.Get(t.Context(), key)
	if !errors.Is(err, ErrMiss) {
		t.Fatalf("Get(%q) = %q, %v; want ErrMiss", key, abbrev(got), err)
	}
	if got != nil {
		t.Fatalf("Get(%q) returned %q with ErrMiss, want nil", key, abbrev(got))
	}
}

func abbrev(b []byte) []byte {
	if len(b) > 32 {
		return append(b[:32:32], "..."...)
	}
	return b
}

// assertExpiresIn checks that key, just set with ttl, lives for ttl. Redis is
// asked for the key's PTTL; other stores are judged by advancing the clock
// they were given, which consumes the key.
func assertExpiresIn(t *testing.T, s store, clock *clocktest.Clock, key string, value []byte, ttl time.Duration) {
	t.Helper()
	if r, ok := s.(interface{ Client() redis.UniversalClient }); ok {
		pttl, err := r.Client().PTTL(t.Context(), key).Result()
		if err != nil {
			t.Fatalf("PTTL(%q): %v", key, err)
		}
		if pttl <= ttl-time.Second || pttl > ttl {
			t.Fatalf("PTTL(%q) = %v, want within (%v, %v]", key, pttl, ttl-time.Second, ttl)
		}
		return
	}
	clock.Advance(ttl - time.Nanosecond)
	mustGet(t, s, key, value)
	clock.Advance(time.Nanosecond)
	mustMiss(t, s, key)
}

func testMiss(t *testing.T, s store, _ *clocktest.Clock) {
	mustMiss(t, s, "absent")
}

func testRoundTrip(t *testing.T, s store, _ *clocktest.Clock) {
	mustSet(t, s, "k1", []byte("v1"), time.Minute)
	mustSet(t, s, "k2", []byte("v2"), time.Minute)
	mustGet(t, s, "k1", []byte("v1"))
	mustGet(t, s, "k2", []byte("v2"))
}

func testGetReturnsCopy(t *testing.T, s store, _ *clocktest.Clock) {
	mustSet(t, s, "k", []byte("value"), time.Minute)
	got, err := s.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	got[0] = 'X'
	mustGet(t, s, "k", []byte("value"))
}

func testSetStoresCopy(t *testing.T, s store, _ *clocktest.Clock) {
	v := []byte("value")
	mustSet(t, s, "k", v, time.Minute)
	v[0] = 'X'
	mustGet(t, s, "k", []byte("value"))
}

func testOverwrite(t *testing.T, s store, _ *clocktest.Clock) {
	mustSet(t, s, "k", []byte("old"), time.Minute)
	mustSet(t, s, "k", []byte("new"), time.Minute)
	mustGet(t, s, "k", []byte("new"))
}

func testDelete(t *testing.T, s store, _ *clocktest.Clock) {
	mustSet(t, s, "k", []byte("v"), time.Minute)
	mustSet(t, s, "other", []byte("w"), time.Minute)
	if err := s.Delete(t.Context(), "k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	mustMiss(t, s, "k")
	mustGet(t, s, "other", []byte("w"))
}

func testDeleteAbsent(t *testing.T, s store, _ *clocktest.Clock) {
	if err := s.Delete(t.Context(), "absent"); err != nil {
		t.Fatalf("Delete(absent) = %v, want nil", err)
	}
}

func testInvalidTTL(t *testing.T, s store, _ *clocktest.Clock) {
	mustSet(t, s, "kept", []byte("v"), time.Minute)
	for _, ttl := range []time.Duration{0, -time.Nanosecond, -time.Hour} {
		if err := s.Set(t.Context(), "new", []byte("x"), ttl); !errors.Is(err, ErrInvalidTTL) {
			t.Errorf("Set(ttl=%v) = %v, want ErrInvalidTTL", ttl, err)
		}
		if err := s.Set(t.Context(), "kept", []byte("x"), ttl); !errors.Is(err, ErrInvalidTTL) {
			t.Errorf("Set(existing, ttl=%v) = %v, want ErrInvalidTTL", ttl, err)
		}
	}
	mustMiss(t, s, "new")
	mustGet(t, s, "kept", []byte("v"))
}

func testExpiry(t *testing.T, s store, clock *clocktest.Clock) {
	mustSet(t, s, "k", []byte("v"), 90*time.Second)
	assertExpiresIn(t, s, clock, "k", []byte("v"), 90*time.Second)
}

func testOverwriteResetsTTL(t *testing.T, s store, clock *clocktest.Clock) {
	mustSet(t, s, "k", []byte("old"), time.Minute)
	mustSet(t, s, "k", []byte("new"), time.Hour)
	assertExpiresIn(t, s, clock, "k", []byte("new"), time.Hour)
}

func testBinaryValue(t *testing.T, s store, _ *clocktest.Clock) {
	v := make([]byte, 0, 512)
	for i := range 256 {
		v = append(v, byte(i))
	}
	v = append(v, "\r\n$-1\r\n*0\r\n\x00"...) // RESP framing must not matter
	mustSet(t, s, "bin", v, time.Minute)
	mustGet(t, s, "bin", v)
}

func testEmptyValue(t *testing.T, s store, _ *clocktest.Clock) {
	for _, v := range [][]byte{{}, nil} {
		mustSet(t, s, "empty", v, time.Minute)
		got, err := s.Get(t.Context(), "empty")
		if err != nil || len(got) != 0 {
			t.Fatalf("Get(empty) = %q, %v; want empty value, nil", got, err)
		}
	}
}

func testLargeValue(t *testing.T, s store, _ *clocktest.Clock) {
	v := make([]byte, 1<<20)
	_, _ = rand.Read(v)
	mustSet(t, s, "large", v, time.Minute)
	mustGet(t, s, "large", v)
}

// testConcurrent races writers, readers and deleters over a few keys; a
// reader may miss but must never see a torn or foreign value.
func testConcurrent(t *testing.T, s store, _ *clocktest.Clock) {
	const workers, ops, keys = 8, 200, 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			ctx := t.Context()
			for i := range ops {
				key := fmt.Sprintf("key-%d", i%keys)
				switch i % 3 {
				case 0:
					v := fmt.Sprintf("%s|%d|%d", key, w, i)
					if err := s.Set(ctx, key, []byte(v), time.Minute); err != nil {
						t.Errorf("Set: %v", err)
						return
					}
				case 1:
					got, err := s.Get(ctx, key)
					if errors.Is(err, ErrMiss) {
						continue
					}
					if err != nil {
						t.Errorf("Get: %v", err)
						return
					}
					if !strings.HasPrefix(string(got), key+"|") {
						t.Errorf("Get(%q) = %q: value of another key", key, got)
						return
					}
				case 2:
					if i%2 == 0 { // delete less often than reading
						if err := s.Delete(ctx, key); err != nil {
							t.Errorf("Delete: %v", err)
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()
}

func testCancelledContext(t *testing.T, s store, _ *clocktest.Clock) {
	mustSet(t, s, "k", []byte("v"), time.Minute)

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()

	for _, tc := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"cancelled", cancelled, context.Canceled},
		{"deadline passed", expired, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(op string, err error) {
				t.Helper()
				if err == nil || errors.Is(err, ErrMiss) {
					t.Fatalf("%s = %v, want an error", op, err)
				}
				if !errors.Is(err, tc.want) {
					t.Errorf("%s = %v, want errors.Is %v", op, err, tc.want)
				}
				if !strings.HasPrefix(err.Error(), "cache: ") {
					t.Errorf("%s = %q, want the cache: prefix", op, err)
				}
			}
			got, err := s.Get(tc.ctx, "k")
			if got != nil {
				t.Errorf("Get returned %q with a done context", got)
			}
			check("Get", err)
			check("Set", s.Set(tc.ctx, "new", []byte("x"), time.Minute))
			check("Delete", s.Delete(tc.ctx, "k"))
		})
	}
	mustMiss(t, s, "new")
	mustGet(t, s, "k", []byte("v"))
}
