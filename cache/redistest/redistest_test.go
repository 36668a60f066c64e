package redistest

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestServer(t *testing.T) {
	s := Start(t, "--maxmemory-policy", "volatile-lru")
	if want := "redis://" + s.Addr() + "/0"; s.URL() != want {
		t.Errorf("URL = %q, want %q", s.URL(), want)
	}
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Errorf("Addr = %q, want loopback", s.Addr())
	}
	c := s.Client(t)
	ctx := t.Context()

	policy, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		t.Fatal(err)
	}
	if policy["maxmemory-policy"] != "volatile-lru" {
		t.Errorf("maxmemory-policy = %q, want the extra argument applied", policy["maxmemory-policy"])
	}
	persistence, err := c.ConfigGet(ctx, "save").Result()
	if err != nil {
		t.Fatal(err)
	}
	if persistence["save"] != "" {
		t.Errorf("save = %q, want persistence off", persistence["save"])
	}

	if err := c.Set(ctx, "k", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	s.FlushAll(t)
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS after FlushAll = %d, %v; want 0", n, err)
	}

	s.Stop()
	s.Stop() // idempotent
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING after Stop succeeded")
	}

	addr := s.Addr()
	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("Addr after Restart = %q, want %q", s.Addr(), addr)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	s.Restart(t) // restarting a running server works too
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after second Restart: %v", err)
	}
}

func TestServerStoppedAtCleanup(t *testing.T) {
	var addr string
	t.Run("owner", func(t *testing.T) {
		addr = Start(t).Addr()
	})
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("%s still accepts connections after the owning test ended", addr)
	}
}

func TestStartFailures(t *testing.T) {
	t.Run("bad argument", func(t *testing.T) {
		msg := fatalMessage(t, func(tb testing.TB) { Start(tb, "--no-such-directive", "yes") })
		if !strings.Contains(msg, "Bad directive") {
			t.Errorf("failure %q does not quote redis-server's output", msg)
		}
	})
	t.Run("not installed", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		msg := fatalMessage(t, func(tb testing.TB) { Start(tb) })
		if !strings.Contains(msg, "redis-server not found: install the Debian package redis-server") {
			t.Errorf("failure %q does not say how to install redis-server", msg)
		}
	})
}

// fatalTB records the first Fatalf instead of failing the test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatalMessage runs fn and returns the message it passed to Fatalf.
func fatalMessage(t *testing.T, fn func(testing.TB)) string {
	t.Helper()
	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
	}()
	<-done
	if tb.msg == "" {
		t.Fatal("Fatalf was not called")
	}
	return tb.msg
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	if len(c.Addrs()) != 3 {
		t.Fatalf("Addrs = %q, want 3", c.Addrs())
	}
	cc := c.Client(t)
	ctx := t.Context()
	// Keys in every node's slots.
	for i := range 30 {
		k := fmt.Sprint("key-", i)
		if err := cc.Set(ctx, k, "v", time.Minute).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}
	var masters atomic.Int32 // ForEachMaster runs concurrently
	err := cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		masters.Add(1)
		size, err := n.DBSize(ctx).Result()
		if err == nil && size == 0 {
			err = fmt.Errorf("node %s holds no keys", n.Options().Addr)
		}
		return err
	})
	if err != nil || masters.Load() != 3 {
		t.Fatalf("ForEachMaster: %d masters, %v", masters.Load(), err)
	}
	c.FlushAll(t)
	if n, err := cc.Exists(ctx, "key-1").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS after FlushAll = %d, %v", n, err)
	}
	if !strings.Contains(c.URL(), "addr="+url.QueryEscape(c.Addrs()[2])) {
		t.Errorf("URL %q does not name the third node", c.URL())
	}
}

func TestSentinel(t *testing.T) {
	s := StartSentinel(t)
	if s.MasterName() != "mymaster" {
		t.Errorf("MasterName = %q", s.MasterName())
	}
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    s.MasterName(),
		SentinelAddrs: []string{s.SentinelAddr()},
	})
	t.Cleanup(func() { _ = c.Close() })
	ctx := t.Context()
	if err := c.Set(ctx, "k", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Master().Client(t).Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET on the master = %q, %v; want the value set via the sentinel", v, err)
	}
}

func TestSentinelAuth(t *testing.T) {
	for _, auth := range []SentinelAuth{
		{MasterPassword: "master-pw", SentinelPassword: "sentinel-pw"},
		{MasterPassword: "master-pw", SentinelUser: "qtb", SentinelPassword: "sentinel-pw"},
	} {
		t.Run(cmp.Or(auth.SentinelUser, "default user"), func(t *testing.T) {
			s := StartSentinelAuth(t, auth)
			ctx := t.Context()
			o, err := redis.ParseFailoverURL(s.URL())
			if err != nil {
				t.Fatalf("ParseFailoverURL(URL()): %v", err)
			}
			if o.SentinelUsername != auth.SentinelUser || o.SentinelPassword != auth.SentinelPassword || o.Password != auth.MasterPassword {
				t.Errorf("URL %q: sentinel user %q, sentinel password %q, master password %q; want those of %+v",
					s.URL(), o.SentinelUsername, o.SentinelPassword, o.Password, auth)
			}
			c := redis.NewFailoverClient(o)
			t.Cleanup(func() { _ = c.Close() })
			if err := c.Set(ctx, "k", "v", time.Minute).Err(); err != nil {
				t.Fatalf("SET via the sentinel with both passwords: %v", err)
			}
			if v, err := s.Master().Client(t).Get(ctx, "k").Result(); err != nil || v != "v" {
				t.Fatalf("GET on the master = %q, %v", v, err)
			}

			for name, opts := range map[string]*redis.Options{
				"sentinel without a password": {Addr: s.SentinelAddr()},
				"sentinel with the master's":  {Addr: s.SentinelAddr(), Username: auth.SentinelUser, Password: auth.MasterPassword},
				"master without a password":   {Addr: s.Master().Addr()},
			} {
				opts.MaxRetries = -1
				c := redis.NewClient(opts)
				defer c.Close()
				if err := c.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") && !strings.Contains(err.Error(), "WRONGPASS") {
					t.Errorf("%s: PING = %v, want NOAUTH or WRONGPASS", name, err)
				}
			}
		})
	}
}

func TestTLS(t *testing.T) {
	s := StartTLS(t, "app", "s3cret")
	if want := "rediss://app:s3cret@" + s.Addr() + "/0"; s.URL() != want {
		t.Errorf("URL = %q, want %q", s.URL(), want)
	}
	if s.CAFile() == "" {
		t.Fatal("CAFile is empty")
	}
	ctx := t.Context()
	if who, err := s.Client(t).Do(ctx, "ACL", "WHOAMI").Text(); err != nil || who != "app" {
		t.Fatalf("ACL WHOAMI = %q, %v; want app", who, err)
	}

	plain := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer plain.Close()
	if err := plain.Ping(ctx).Err(); err == nil {
		t.Error("PING without TLS succeeded")
	}
	anon := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, TLSConfig: s.tls.clientConfig()})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("PING as the default user = %v, want NOAUTH", err)
	}

	s.Stop()
	s.Restart(t)
	if err := s.Client(t).Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
}

func TestFailover(t *testing.T) {
	f := StartFailover(t)
	ctx := t.Context()
	if got := f.CurrentMaster(t); got != f.Master() {
		t.Fatalf("master at start = %s, want %s", got.Addr(), f.Master().Addr())
	}
	if err := f.Master().Client(t).Set(ctx, "k", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Master().Client(t).Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the replica = %d, %v", n, err)
	}
	notices := f.SwitchNotices(t)
	start := time.Now()
	f.Promote(t)
	select {
	case at := <-notices:
		t.Logf("graceful failover: +switch-master after %v", at.Sub(start))
	case <-time.After(15 * time.Second):
		t.Fatal("no +switch-master within 15s of SENTINEL FAILOVER")
	}
	if got := f.CurrentMaster(t); got != f.Replica() {
		t.Fatalf("master after failover = %s, want the replica %s", got.Addr(), f.Replica().Addr())
	}
	if v, err := f.Replica().Client(t).Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("the promoted replica holds %q, %v; want the master's value", v, err)
	}

	// And back, the hard way: kill the master the replica became.
	f.Replica().Stop()
	start = time.Now()
	select {
	case at := <-notices:
		t.Logf("killed master: +switch-master after %v", at.Sub(start))
	case <-time.After(15 * time.Second):
		t.Fatal("no +switch-master within 15s of killing the master")
	}
	if got := f.CurrentMaster(t); got != f.Master() {
		t.Fatalf("master after the kill = %s, want %s", got.Addr(), f.Master().Addr())
	}
}

func TestPause(t *testing.T) {
	s := Start(t)
	c := s.Client(t)
	s.Pause()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("a paused server answered PING")
	}
	s.Resume()
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
}
