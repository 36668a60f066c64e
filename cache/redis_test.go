package cache

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
)

func TestRedisConformance(t *testing.T) {
	srv := redistest.Start(t)
	runConformance(t, func(t *testing.T, _ func() time.Time) store {
		srv.FlushAll(t)
		return newTestRedis(t, RedisOptions{URL: srv.URL()})
	})
}

func newTestRedis(t *testing.T, opts RedisOptions) *Redis {
	t.Helper()
	r, err := NewRedis(opts)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func clientOptions(t *testing.T, r *Redis) *redis.Options {
	t.Helper()
	c, ok := r.Client().(*redis.Client)
	if !ok {
		t.Fatalf("Client() is %T, want *redis.Client", r.Client())
	}
	return c.Options()
}

func TestNewRedisOptions(t *testing.T) {
	tests := []struct {
		name  string
		opts  RedisOptions
		check func(t *testing.T, o *redis.Options)
	}{
		{
			name: "defaults",
			opts: RedisOptions{URL: "redis://cache.internal"},
			check: func(t *testing.T, o *redis.Options) {
				want := DefaultRedisTimeout
				if o.DialTimeout != want || o.ReadTimeout != want || o.WriteTimeout != want {
					t.Errorf("timeouts dial/read/write = %v/%v/%v, want %v", o.DialTimeout, o.ReadTimeout, o.WriteTimeout, want)
				}
				if o.MaxRetries != DefaultRedisMaxRetries {
					t.Errorf("MaxRetries = %d, want %d", o.MaxRetries, DefaultRedisMaxRetries)
				}
				if o.DialerRetries != 1 {
					t.Errorf("DialerRetries = %d, want 1", o.DialerRetries)
				}
				if o.Addr != "cache.internal:6379" || o.DB != 0 || o.TLSConfig != nil {
					t.Errorf("Addr, DB, TLS = %q, %d, %v; want cache.internal:6379, 0, no TLS", o.Addr, o.DB, o.TLSConfig)
				}
			},
		},
		{
			name: "rediss with ACL user and db",
			opts: RedisOptions{URL: "rediss://app:s3cr%40t@cache.example.com:6380/2"},
			check: func(t *testing.T, o *redis.Options) {
				if o.TLSConfig == nil {
					t.Fatal("TLSConfig is nil, want TLS for rediss://")
				}
				if o.TLSConfig.ServerName != "cache.example.com" || o.TLSConfig.MinVersion < tls.VersionTLS12 || o.TLSConfig.InsecureSkipVerify {
					t.Errorf("TLS ServerName %q, MinVersion %x, InsecureSkipVerify %v", o.TLSConfig.ServerName, o.TLSConfig.MinVersion, o.TLSConfig.InsecureSkipVerify)
				}
				if o.Addr != "cache.example.com:6380" || o.DB != 2 {
					t.Errorf("Addr, DB = %q, %d", o.Addr, o.DB)
				}
				if o.Username != "app" || o.Password != "s3cr@t" {
					t.Errorf("Username, Password = %q, %q; want app, s3cr@t", o.Username, o.Password)
				}
			},
		},
		{
			name: "password option overrides the URL's",
			opts: RedisOptions{URL: "redis://app:old@h/1", Password: "from-file"},
			check: func(t *testing.T, o *redis.Options) {
				if o.Username != "app" || o.Password != "from-file" {
					t.Errorf("Username, Password = %q, %q; want app, from-file", o.Username, o.Password)
				}
			},
		},
		{
			name: "unescaped reserved characters in password",
			opts: RedisOptions{URL: "redis://:a/b?c#d@h:7000/3"},
			check: func(t *testing.T, o *redis.Options) {
				if o.Username != "" || o.Password != "a/b?c#d" || o.Addr != "h:7000" || o.DB != 3 {
					t.Errorf("Username, Password, Addr, DB = %q, %q, %q, %d", o.Username, o.Password, o.Addr, o.DB)
				}
			},
		},
		{
			name: "options win over the URL query",
			opts: RedisOptions{
				URL:         "redis://h/0?dial_timeout=3s&read_timeout=4s&pool_size=3&max_retries=5",
				DialTimeout: 2 * time.Second, PoolSize: 7, MaxRetries: -1,
			},
			check: func(t *testing.T, o *redis.Options) {
				if o.DialTimeout != 2*time.Second || o.PoolSize != 7 || o.MaxRetries != 0 {
					t.Errorf("DialTimeout, PoolSize, MaxRetries = %v, %d, %d; want 2s, 7, 0", o.DialTimeout, o.PoolSize, o.MaxRetries)
				}
				if o.ReadTimeout != 4*time.Second || o.WriteTimeout != DefaultRedisTimeout {
					t.Errorf("ReadTimeout, WriteTimeout = %v, %v; want 4s from the URL, default", o.ReadTimeout, o.WriteTimeout)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := clientOptions(t, newTestRedis(t, tt.opts))
			if !o.ContextTimeoutEnabled {
				t.Error("ContextTimeoutEnabled is false")
			}
			tt.check(t, o)
		})
	}
}

func TestNewRedisURLErrorsRedactPassword(t *testing.T) {
	tests := []struct {
		url     string
		secrets []string // must not appear in the error
	}{
		{"redis://user:hunter2@host:badport/0", []string{"hunter2"}},
		{"redis://:hunter2@host/notadb", []string{"hunter2"}},
		{"rediss://user:hunter2@host/0?bogus=1", []string{"hunter2"}},
		{"http://user:hunter2@host", []string{"hunter2"}},
		{"user:hunter2@host:6379", []string{"hunter2"}},
		{"redis://user:hun/ter2@host:x", []string{"hun", "ter2"}},
		{"redis://user:123/hunter2@host:x", []string{"123", "hunter2"}},
		{"redis://user:hun?ter2=1@host:x", []string{"hun", "ter2"}},
		{"redis://user:hunter2%zz@host", []string{"hunter2", "%zz"}},
		{"redis://us%zzer:hunter2@host", []string{"hunter2"}},
		{"redis://user:hun%0Ater2@host:x\x7f", []string{"hun", "ter2"}},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			r, err := NewRedis(RedisOptions{URL: tt.url})
			if err == nil {
				_ = r.Close()
				t.Fatal("NewRedis succeeded, want an error")
			}
			msg := err.Error()
			for _, s := range tt.secrets {
				if strings.Contains(msg, s) {
					t.Errorf("error %q contains %q", msg, s)
				}
			}
			if !strings.HasPrefix(msg, "cache: redis URL ") || !strings.Contains(msg, "xxxxx") {
				t.Errorf("error %q: want the cache: prefix and the redacted URL", msg)
			}
		})
	}
}

func TestNewRedisRequiresURL(t *testing.T) {
	if _, err := NewRedis(RedisOptions{}); err == nil {
		t.Fatal("NewRedis with no URL succeeded")
	}
}

func TestRedisAuth(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "right-one")
	url := "redis://:hunter2@" + srv.Addr() + "/0"

	wrong := newTestRedis(t, RedisOptions{URL: url})
	err := wrong.Ping(t.Context())
	if err == nil {
		t.Fatal("Ping with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q contains the password", err)
	}

	right := newTestRedis(t, RedisOptions{URL: url, Password: "right-one"})
	if err := right.Ping(t.Context()); err != nil {
		t.Fatalf("Ping with the Password option: %v", err)
	}
}

// TestRedisServerDown checks that every operation fails, and is not taken
// for a miss, when nothing listens. It runs under the configured timeouts
// only: a client that waited for ever would hang the test.
func TestRedisServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()

	r := newTestRedis(t, RedisOptions{URL: "redis://" + addr + "/0"})
	assertUnavailable(t, r)
}

func assertUnavailable(t *testing.T, r *Redis) {
	t.Helper()
	ctx := t.Context()
	_, getErr := r.Get(ctx, "k")
	for op, err := range map[string]error{
		"get":    getErr,
		"set":    r.Set(ctx, "k", []byte("v"), time.Minute),
		"delete": r.Delete(ctx, "k"),
		"ping":   r.Ping(ctx),
	} {
		if err == nil || errors.Is(err, ErrMiss) {
			t.Errorf("%s with Redis down = %v, want an error other than ErrMiss", op, err)
			continue
		}
		if prefix := "cache: redis " + op + ": "; !strings.HasPrefix(err.Error(), prefix) {
			t.Errorf("%s error %q, want prefix %q", op, err, prefix)
		}
	}
}

func TestRedisOutageAndRecovery(t *testing.T) {
	srv := redistest.Start(t)
	r := newTestRedis(t, RedisOptions{URL: srv.URL()})
	mustSet(t, r, "k", []byte("v"), time.Minute)

	srv.Stop()
	assertUnavailable(t, r)

	srv.Restart(t)
	mustMiss(t, r, "k") // the restarted server kept nothing
	mustSet(t, r, "k", []byte("v2"), time.Minute)
	mustGet(t, r, "k", []byte("v2"))
}

// TestRedisHonoursContextDeadline talks to a server that accepts connections
// and never answers. With read timeouts of an hour, only the caller's
// deadline can end the call, so the test hangs if ContextTimeoutEnabled does
// not work.
func TestRedisHonoursContextDeadline(t *testing.T) {
	r := newTestRedis(t, RedisOptions{
		URL:          "redis://" + silentServer(t) + "/0",
		ReadTimeout:  time.Hour,
		WriteTimeout: time.Hour,
		MaxRetries:   -1,
	})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Get(ctx, "k"); err == nil || errors.Is(err, ErrMiss) {
		t.Fatalf("Get from a silent server = %v, want an error", err)
	}
}

func TestRedisTTL(t *testing.T) {
	for _, tt := range []struct{ in, want time.Duration }{
		{time.Nanosecond, time.Millisecond},
		{999 * time.Microsecond, time.Millisecond},
		{time.Millisecond, time.Millisecond},
		{1500 * time.Microsecond, time.Millisecond},
		{time.Hour + time.Nanosecond, time.Hour},
	} {
		if got := redisTTL(tt.in); got != tt.want {
			t.Errorf("redisTTL(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
