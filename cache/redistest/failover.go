package redistest

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Failover is a master with one replica, watched by a Sentinel (quorum 1)
// that takes a master for dead after FailoverDownAfter and then promotes
// the replica: for tests of what a failover costs. Its Sentinel methods
// (SentinelAddr, MasterName, URL) work as for StartSentinel; Master is the
// first master, whatever has happened since.
type Failover struct {
	*Sentinel
	replica *Server
}

// FailoverDownAfter is how long a StartFailover Sentinel waits for a
// silent master before failing over (sentinel down-after-milliseconds).
const FailoverDownAfter = 500 * time.Millisecond

// StartFailover runs a master, a replica of it and a Sentinel, and waits
// until the replica is in sync and the Sentinel knows it. All stop when the
// test ends.
func StartFailover(tb testing.TB) *Failover {
	tb.Helper()
	lookPath(tb, "redis-server")
	// No 5 s wait for more replicas before the first full sync.
	master := launch(tb, &Server{dir: tb.TempDir(), args: []string{"--repl-diskless-sync-delay", "0"}})
	replica := launch(tb, &Server{dir: tb.TempDir(), args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.port)}})
	ctx, cancel := context.WithTimeout(tb.Context(), readyWithin)
	defer cancel()
	if err := waitInfo(ctx, replica, "master_link_status:up"); err != nil {
		tb.Fatalf("redistest: replica %s: %v\n%s", replica.Addr(), err, replica.log.tail(logTail))
	}
	sentinel := launch(tb, &Server{dir: tb.TempDir(), sentinelOf: master, sentinelConf: fmt.Sprintf(
		"sentinel down-after-milliseconds %[1]s %[2]d\nsentinel failover-timeout %[1]s 5000\n",
		sentinelMasterName, FailoverDownAfter.Milliseconds())})
	f := &Failover{Sentinel: &Sentinel{master: master, sentinel: sentinel}, replica: replica}
	if err := f.waitMaster(ctx); err != nil {
		tb.Fatalf("redistest: sentinel %s: %v\n%s", sentinel.Addr(), err, sentinel.log.tail(logTail))
	}
	if err := f.waitReplicaKnown(ctx); err != nil {
		tb.Fatalf("redistest: sentinel %s: %v\n%s", sentinel.Addr(), err, sentinel.log.tail(logTail))
	}
	return f
}

// Replica returns the first replica.
func (f *Failover) Replica() *Server { return f.replica }

// Servers returns the master and the replica, in the order they started.
func (f *Failover) Servers() []*Server { return []*Server{f.master, f.replica} }

// MasterAddr asks the Sentinel which server is the master now.
func (f *Failover) MasterAddr(tb testing.TB) string {
	tb.Helper()
	c := f.sentinelClient()
	defer c.Close()
	addr, err := c.GetMasterAddrByName(tb.Context(), sentinelMasterName).Result()
	if err != nil {
		tb.Fatalf("redistest: SENTINEL GET-MASTER-ADDR-BY-NAME: %v", err)
	}
	return net.JoinHostPort(addr[0], addr[1])
}

// CurrentMaster returns the server the Sentinel names master now.
func (f *Failover) CurrentMaster(tb testing.TB) *Server {
	tb.Helper()
	addr := f.MasterAddr(tb)
	for _, s := range f.Servers() {
		if s.Addr() == addr {
			return s
		}
	}
	tb.Fatalf("redistest: the Sentinel names %s master, which is none of ours", addr)
	return nil
}

// Promote asks the Sentinel for a graceful failover (SENTINEL FAILOVER):
// the replica becomes master. It returns once the Sentinel has accepted.
func (f *Failover) Promote(tb testing.TB) {
	tb.Helper()
	c := f.sentinelClient()
	defer c.Close()
	if err := c.Failover(tb.Context(), sentinelMasterName).Err(); err != nil {
		tb.Fatalf("redistest: SENTINEL FAILOVER: %v", err)
	}
}

// SwitchNotices subscribes to the Sentinel's +switch-master messages and
// sends the time each arrives, until the test ends. It returns once
// subscribed.
func (f *Failover) SwitchNotices(tb testing.TB) <-chan time.Time {
	tb.Helper()
	c := f.sentinelClient()
	ps := c.Subscribe(tb.Context(), "+switch-master")
	if _, err := ps.Receive(tb.Context()); err != nil {
		tb.Fatalf("redistest: subscribe to +switch-master: %v", err)
	}
	out := make(chan time.Time, 8)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range ps.Channel() {
			select {
			case out <- time.Now():
			default:
			}
		}
	}()
	tb.Cleanup(func() {
		_ = ps.Close()
		<-done
		_ = c.Close()
	})
	return out
}

func (f *Failover) sentinelClient() *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: f.sentinel.Addr(), MaxRetries: -1})
}

// waitReplicaKnown polls until the Sentinel lists a replica it would
// promote.
func (f *Failover) waitReplicaKnown(ctx context.Context) error {
	c := f.sentinelClient()
	defer c.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		replicas, _ := c.Replicas(ctx, sentinelMasterName).Result()
		for _, r := range replicas {
			if r["port"] == strconv.Itoa(f.replica.port) && r["flags"] == "slave" && r["master-link-status"] == "ok" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica %s not known to the Sentinel within %v: %v", f.replica.Addr(), readyWithin, replicas)
		case <-tick.C:
		}
	}
}

// waitInfo polls s's INFO until it holds line.
func waitInfo(ctx context.Context, s *Server, line string) error {
	c := redis.NewClient(s.options())
	defer c.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		info, _ := c.Info(ctx, "replication").Result()
		if strings.Contains(info, line) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("INFO replication lacks %q within %v", line, readyWithin)
		case <-tick.C:
		}
	}
}
