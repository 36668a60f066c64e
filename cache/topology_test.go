package cache

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
)

func TestRedisCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	viaAddrs := func(t *testing.T) *Redis {
		return newTestRedis(t, RedisOptions{Mode: ModeCluster, Addrs: c.Addrs()})
	}
	viaURL := func(t *testing.T) *Redis {
		return newTestRedis(t, RedisOptions{Mode: ModeCluster, URL: c.URL()})
	}
	t.Run("Conformance", func(t *testing.T) {
		runConformance(t, func(t *testing.T, _ func() time.Time) store {
			c.FlushAll(t)
			r := viaAddrs(t)
			if _, ok := r.Client().(*redis.ClusterClient); !ok {
				t.Fatalf("Client() is %T, want *redis.ClusterClient", r.Client())
			}
			return r
		})
	})
	t.Run("Leases", func(t *testing.T) { runLeaseTests(t, viaURL) })
	t.Run("Invalidations", func(t *testing.T) { runInvalidationTests(t, viaAddrs) })
	t.Run("ScriptOverOneHashTag", func(t *testing.T) { testScriptOverOneHashTag(t, viaAddrs(t)) })
	t.Run("RateLimits", func(t *testing.T) { runRateTests(t, viaAddrs) })
	t.Run("InvalidationsFromEveryNode", func(t *testing.T) {
		sub := subscribe(t, viaAddrs(t))
		for i, node := range c.Nodes() {
			// A replica whose client happens to publish on this node.
			pub := newTestRedis(t, RedisOptions{URL: node.URL()})
			publishUntilSeen(t, pub, fmt.Sprintf("qtb:tok:t:{node%d}", i), sub)
		}
	})
}

// setIfHeld writes a token only while its writer holds the lease: a script
// touching two keys, which Cluster runs only when both hash to one slot.
var setIfHeld = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("SET", KEYS[2], ARGV[2], "PX", ARGV[3])
end
return false`)

func testScriptOverOneHashTag(t *testing.T, r *Redis) {
	ctx := t.Context()
	l := mustLock(t, r, "qtb:lock:t:{abc}", time.Minute)

	err := setIfHeld.Run(ctx, r.Client(), []string{l.Key(), "qtb:tok:t:{abc}"}, l.value, "sealed-token", 60000).Err()
	if err != nil {
		t.Fatalf("script over qtb:lock:t:{abc} and qtb:tok:t:{abc}: %v", err)
	}
	mustGet(t, r, "qtb:tok:t:{abc}", []byte("sealed-token"))

	err = setIfHeld.Run(ctx, r.Client(), []string{l.Key(), "qtb:tok:t:{xyz}"}, l.value, "x", 60000).Err()
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("script over two hash tags = %v, want CROSSSLOT", err)
	}

	mustRelease(t, l)
	err = setIfHeld.Run(ctx, r.Client(), []string{l.Key(), "qtb:tok:t:{abc}"}, l.value, "late", 60000).Err()
	if !errors.Is(err, redis.Nil) {
		t.Fatalf("script after Release = %v, want nil reply", err)
	}
	mustGet(t, r, "qtb:tok:t:{abc}", []byte("sealed-token"))
}

func TestRedisSentinel(t *testing.T) {
	s := redistest.StartSentinel(t)
	viaAddrs := func(t *testing.T) *Redis {
		return newTestRedis(t, RedisOptions{Mode: ModeSentinel, Addrs: []string{s.SentinelAddr()}, MasterName: s.MasterName()})
	}
	viaURL := func(t *testing.T) *Redis {
		return newTestRedis(t, RedisOptions{Mode: ModeSentinel, URL: s.URL()})
	}
	t.Run("Conformance", func(t *testing.T) {
		runConformance(t, func(t *testing.T, _ func() time.Time) store {
			s.Master().FlushAll(t)
			return viaURL(t)
		})
	})
	t.Run("Leases", func(t *testing.T) { runLeaseTests(t, viaAddrs) })
	t.Run("Invalidations", func(t *testing.T) { runInvalidationTests(t, viaURL) })
	t.Run("WritesReachTheMaster", func(t *testing.T) {
		mustSet(t, viaAddrs(t), "qtb:tok:t:{abc}", []byte("v"), time.Minute)
		if v, err := s.Master().Client(t).Get(t.Context(), "qtb:tok:t:{abc}").Result(); err != nil || v != "v" {
			t.Fatalf("GET on the master = %q, %v", v, err)
		}
	})
}

// TestRedisSentinelAuth: sentinels that demand a password of their own,
// different from the master's, and one that admits only an ACL user. The
// client reaches the master with both credentials, and fails naming the
// refusal, never a password, without either.
func TestRedisSentinelAuth(t *testing.T) {
	const masterPW, sentinelPW = "master-s3cret", "sentinel-s3cret"
	pw := redistest.StartSentinelAuth(t, redistest.SentinelAuth{MasterPassword: masterPW, SentinelPassword: sentinelPW})
	acl := redistest.StartSentinelAuth(t, redistest.SentinelAuth{MasterPassword: masterPW, SentinelUser: "qtb", SentinelPassword: sentinelPW})
	opts := func(s *redistest.Sentinel, o RedisOptions) RedisOptions {
		o.Mode = ModeSentinel
		if o.URL == "" {
			o.Addrs, o.MasterName = []string{s.SentinelAddr()}, s.MasterName()
		}
		return o
	}
	urlWith := func(s *redistest.Sentinel, userinfo string) string {
		return "redis://" + userinfo + s.SentinelAddr() + "?master_name=" + s.MasterName()
	}
	for _, tt := range []struct {
		name     string
		sentinel *redistest.Sentinel
		opts     RedisOptions
		wantErr  string // "" for success
	}{
		{"both passwords as options", pw, RedisOptions{Password: masterPW, SentinelPassword: sentinelPW}, ""},
		{"both in the URL", pw, RedisOptions{URL: pw.URL()}, ""},
		{"sentinel password overrides the URL's", pw, RedisOptions{URL: urlWith(pw, ":not-it@"), Password: masterPW, SentinelPassword: sentinelPW}, ""},
		{"no sentinel password", pw, RedisOptions{Password: masterPW}, "NOAUTH"},
		{"the master's password for the sentinels", pw, RedisOptions{Password: masterPW, SentinelPassword: masterPW}, "WRONGPASS"},
		{"no master password", pw, RedisOptions{SentinelPassword: sentinelPW}, "NOAUTH"},
		{"ACL user and password as options", acl, RedisOptions{Password: masterPW, SentinelUsername: "qtb", SentinelPassword: sentinelPW}, ""},
		{"ACL user in the URL, password as an option", acl, RedisOptions{URL: urlWith(acl, "qtb@"), Password: masterPW, SentinelPassword: sentinelPW}, ""},
		{"ACL user option overrides the URL's", acl, RedisOptions{URL: urlWith(acl, "someone@"), Password: masterPW, SentinelUsername: "qtb", SentinelPassword: sentinelPW}, ""},
		{"ACL password without the user", acl, RedisOptions{Password: masterPW, SentinelPassword: sentinelPW}, "WRONGPASS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := opts(tt.sentinel, tt.opts)
			// Sentinel lookups on a loaded machine outlast the 500ms defaults.
			o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
			r := newTestRedis(t, o)
			err := r.Ping(t.Context())
			checkPing(t, err, tt.wantErr)
			if err != nil {
				if strings.Contains(tt.wantErr, "NOAUTH") && tt.opts.SentinelPassword == "" && !strings.Contains(err.Error(), "sentinels") {
					t.Fatalf("error %q does not say the sentinels refused", err)
				}
				return
			}
			key := "qtb:tok:t:{" + strings.ReplaceAll(tt.name, " ", "-") + "}"
			mustSet(t, r, key, []byte("v"), time.Minute)
			if v, err := tt.sentinel.Master().Client(t).Get(t.Context(), key).Result(); err != nil || v != "v" {
				t.Fatalf("GET on the master = %q, %v", v, err)
			}
		})
	}
}

func TestRedisTLS(t *testing.T) {
	srv := redistest.StartTLS(t, "broker", "tls-s3cret")
	trusted := func(t *testing.T) *Redis {
		return newTestRedis(t, RedisOptions{URL: srv.URL(), TLSCAFile: srv.CAFile()})
	}
	t.Run("Conformance", func(t *testing.T) {
		runConformance(t, func(t *testing.T, _ func() time.Time) store {
			srv.FlushAll(t)
			return trusted(t)
		})
	})
	t.Run("Leases", func(t *testing.T) { runLeaseTests(t, trusted) })
	t.Run("Invalidations", func(t *testing.T) { runInvalidationTests(t, trusted) })

	t.Run("Options", func(t *testing.T) {
		o := clientOptions(t, trusted(t))
		if o.TLSConfig == nil || o.TLSConfig.RootCAs == nil || o.TLSConfig.InsecureSkipVerify || o.TLSConfig.MinVersion < tls.VersionTLS12 {
			t.Fatalf("TLSConfig = %+v, want the CA file's roots, verification on, TLS 1.2+", o.TLSConfig)
		}
		if o.Username != "broker" || o.Password != "tls-s3cret" {
			t.Errorf("Username, Password = %q, %q", o.Username, o.Password)
		}
	})

	noCreds := "rediss://" + srv.Addr() + "/0"
	caPEM, err := os.ReadFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		opts    RedisOptions
		wantErr string // "" for success
	}{
		{"system roots do not trust the test CA", RedisOptions{URL: srv.URL()}, "certificate"},
		{"skip verify", RedisOptions{URL: srv.URL(), TLSInsecureSkipVerify: true}, ""},
		{"wrong password", RedisOptions{URL: srv.URL(), TLSCAFile: srv.CAFile(), Password: "not-it"}, "WRONGPASS"},
		{"default user is off", RedisOptions{URL: noCreds, TLSCAFile: srv.CAFile()}, "NOAUTH"},
		{"username and password options", RedisOptions{URL: noCreds, TLSCAFile: srv.CAFile(), Username: "broker", Password: "tls-s3cret"}, ""},
		{"CA as bytes", RedisOptions{URL: srv.URL(), TLSCA: caPEM}, ""},
		{"plain text to a TLS port", RedisOptions{URL: "redis://broker:tls-s3cret@" + srv.Addr() + "/0"}, "cache: redis ping: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			// TLS handshakes on a loaded machine outlast the 500ms defaults.
			opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
			checkPing(t, newTestRedis(t, opts).Ping(t.Context()), tt.wantErr)
		})
	}
}

// checkPing checks a Ping's error: none when wantErr is empty, else one
// containing wantErr; never one that contains a test password (s3cret).
func checkPing(t *testing.T, err error, wantErr string) {
	t.Helper()
	switch {
	case wantErr == "" && err != nil:
		t.Fatalf("Ping: %v", err)
	case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
		t.Fatalf("Ping = %v, want an error containing %q", err, wantErr)
	case err != nil && strings.Contains(err.Error(), "s3cret"):
		t.Fatalf("error %q contains a password", err)
	}
}

func TestNewRedisTopologyOptions(t *testing.T) {
	t.Run("cluster", func(t *testing.T) {
		r := newTestRedis(t, RedisOptions{
			Mode:     ModeCluster,
			URL:      "redis://app:pw@n1:7000?addr=n2:7001&read_timeout=3s",
			Addrs:    []string{"n3:7002"},
			Password: "from-file",
		})
		c, ok := r.Client().(*redis.ClusterClient)
		if !ok {
			t.Fatalf("Client() is %T, want *redis.ClusterClient", r.Client())
		}
		o := c.Options()
		if strings.Join(o.Addrs, ",") != "n1:7000,n2:7001,n3:7002" {
			t.Errorf("Addrs = %q", o.Addrs)
		}
		if o.Username != "app" || o.Password != "from-file" {
			t.Errorf("Username, Password = %q, %q", o.Username, o.Password)
		}
		if !o.ContextTimeoutEnabled || o.DialerRetries != 1 || o.MaxRetries != DefaultRedisMaxRetries {
			t.Errorf("ContextTimeoutEnabled, DialerRetries, MaxRetries = %v, %d, %d", o.ContextTimeoutEnabled, o.DialerRetries, o.MaxRetries)
		}
		if o.DialTimeout != DefaultRedisTimeout || o.ReadTimeout != 3*time.Second || o.WriteTimeout != DefaultRedisTimeout {
			t.Errorf("timeouts dial/read/write = %v/%v/%v", o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
		}
		if o.TLSConfig != nil {
			t.Error("TLS on for redis://")
		}
	})
	t.Run("cluster over TLS", func(t *testing.T) {
		o := newTestRedis(t, RedisOptions{Mode: ModeCluster, URL: "rediss://n1:7000", TLSCAFile: writeCAFile(t)}).
			Client().(*redis.ClusterClient).Options()
		if o.TLSConfig == nil || o.TLSConfig.MinVersion < tls.VersionTLS12 || o.TLSConfig.RootCAs == nil {
			t.Errorf("TLSConfig = %+v, want TLS 1.2+ with the CA file's roots", o.TLSConfig)
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		r := newTestRedis(t, RedisOptions{
			Mode:       ModeSentinel,
			URL:        "redis://:sentinel-pw@s1:26379?master_name=old&addr=s2:26379&password=master-pw",
			MasterName: "mymaster",
			Username:   "app",
		})
		c, ok := r.Client().(*redis.Client)
		if !ok {
			t.Fatalf("Client() is %T, want *redis.Client", r.Client())
		}
		o := c.Options()
		if o.Username != "app" || o.Password != "master-pw" {
			t.Errorf("master Username, Password = %q, %q", o.Username, o.Password)
		}
		if !o.ContextTimeoutEnabled || o.DialerRetries != 1 || o.ReadTimeout != DefaultRedisTimeout {
			t.Errorf("ContextTimeoutEnabled, DialerRetries, ReadTimeout = %v, %d, %v", o.ContextTimeoutEnabled, o.DialerRetries, o.ReadTimeout)
		}
	})
}

// writeCAFile writes a self-signed CA certificate.
func writeCAFile(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNewRedisTopologyErrors(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    RedisOptions
		want    string
		secrets []string
	}{
		{"unknown mode", RedisOptions{Mode: "ring", URL: "redis://h"}, `Mode "ring"`, nil},
		{"standalone with Addrs", RedisOptions{URL: "redis://h", Addrs: []string{"h2:6379"}}, "Addrs is for cluster and sentinel", nil},
		{"cluster without nodes", RedisOptions{Mode: ModeCluster}, "needs Addrs or a URL", nil},
		{"sentinel without master name", RedisOptions{Mode: ModeSentinel, Addrs: []string{"s:26379"}}, "MasterName", nil},
		{"sentinel without sentinels", RedisOptions{Mode: ModeSentinel, MasterName: "m"}, "MasterName", nil},
		{"CA file without TLS", RedisOptions{URL: "redis://h", TLSCAFile: notPEM}, "need a rediss:// URL", nil},
		{"skip verify without TLS", RedisOptions{Mode: ModeCluster, Addrs: []string{"h:1"}, TLSInsecureSkipVerify: true}, "need a rediss:// URL", nil},
		{"CA file missing", RedisOptions{URL: "rediss://h", TLSCAFile: filepath.Join(t.TempDir(), "nope.pem")}, "TLS CA file", nil},
		{"CA file not PEM", RedisOptions{URL: "rediss://h", TLSCAFile: notPEM}, "no PEM certificates", nil},
		{"CA not PEM", RedisOptions{URL: "rediss://h", TLSCA: []byte("not a certificate")}, "no PEM certificates", nil},
		{"CA bytes without TLS", RedisOptions{URL: "redis://h", TLSCA: []byte("x")}, "need a rediss:// URL", nil},
		{"CA file and bytes", RedisOptions{URL: "rediss://h", TLSCAFile: notPEM, TLSCA: []byte("x")}, "set one, not both", nil},
		{
			"cluster URL", RedisOptions{Mode: ModeCluster, URL: "redis://app:hunter2@h:1?addr=nohost"},
			"unable to parse addr param", []string{"hunter2"},
		},
		{
			"sentinel URL", RedisOptions{Mode: ModeSentinel, URL: "redis://:sentinel-pw@s:1?master_name=m&password=master-pw&bogus=1"},
			"unexpected option: bogus", []string{"sentinel-pw", "master-pw"},
		},
		{
			"sentinel URL that url.Parse rejects", RedisOptions{Mode: ModeSentinel, URL: "redis://s:1\x7f?master_name=m&password=master-pw"},
			"invalid control character", []string{"master-pw"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckRedisOptions(tt.opts); err == nil {
				t.Error("CheckRedisOptions accepted what NewRedis refuses")
			}
			r, err := NewRedis(tt.opts)
			if err == nil {
				_ = r.Close()
				t.Fatal("NewRedis succeeded, want an error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "cache: ") || !strings.Contains(msg, tt.want) {
				t.Errorf("error %q, want the cache: prefix and %q", msg, tt.want)
			}
			for _, s := range tt.secrets {
				if strings.Contains(msg, s) {
					t.Errorf("error %q contains %q", msg, s)
				}
			}
		})
	}
}
