package redistest

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// sentinelMasterName is the name the Sentinel knows the master by.
const sentinelMasterName = "mymaster"

// Sentinel is a master redis-server watched by one redis-server --sentinel,
// owned by a test.
type Sentinel struct {
	master, sentinel *Server
}

// StartSentinel runs a master like Start and a Sentinel monitoring it as
// "mymaster" with quorum 1, and waits until the Sentinel reports the master
// up. Both stop when the test ends.
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	lookPath(tb, "redis-server")
	master := Start(tb)
	sentinel := launch(tb, &Server{dir: tb.TempDir(), sentinelOf: master})
	s := &Sentinel{master: master, sentinel: sentinel}

	ctx, cancel := context.WithTimeout(tb.Context(), readyWithin)
	defer cancel()
	if err := s.waitMaster(ctx); err != nil {
		tb.Fatalf("redistest: sentinel %s: %v\n%s", sentinel.Addr(), err, sentinel.log.tail(logTail))
	}
	return s
}

// waitMaster polls until the Sentinel has connected to the master and
// flags it as nothing but a master.
func (s *Sentinel) waitMaster(ctx context.Context) error {
	c := redis.NewSentinelClient(&redis.Options{Addr: s.sentinel.Addr(), MaxRetries: -1})
	defer c.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var state map[string]string
	for {
		state, _ = c.Master(ctx, sentinelMasterName).Result()
		if state["flags"] == "master" && state["port"] == strconv.Itoa(s.master.port) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("master %s not reported up within %v: %v", sentinelMasterName, readyWithin, state)
		case <-tick.C:
		}
	}
}

// SentinelAddr returns the Sentinel's address, "127.0.0.1:PORT".
func (s *Sentinel) SentinelAddr() string { return s.sentinel.Addr() }

// MasterName returns the name the Sentinel monitors the master by.
func (s *Sentinel) MasterName() string { return sentinelMasterName }

// URL returns a redis.ParseFailoverURL URL for the master via the Sentinel.
func (s *Sentinel) URL() string {
	return "redis://" + s.SentinelAddr() + "?master_name=" + sentinelMasterName
}

// Master returns the master server, for outage tests and FlushAll.
func (s *Sentinel) Master() *Server { return s.master }
