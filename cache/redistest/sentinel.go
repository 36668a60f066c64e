package redistest

import (
	"context"
	"fmt"
	"net/url"
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

// SentinelAuth are the passwords of a StartSentinelAuth pair. The zero
// value asks for none, as StartSentinel does.
type SentinelAuth struct {
	// MasterPassword is the master's requirepass. The Sentinel monitors the
	// master with it (sentinel auth-pass).
	MasterPassword string
	// SentinelPassword is the Sentinel's own password: its requirepass, or
	// SentinelUser's password.
	SentinelPassword string
	// SentinelUser, when set, is the only user the Sentinel accepts (its
	// default user is off), with SentinelPassword. It needs SentinelPassword.
	SentinelUser string
}

// StartSentinel runs a master like Start and a Sentinel monitoring it as
// "mymaster" with quorum 1, and waits until the Sentinel reports the master
// up. Both stop when the test ends.
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	return StartSentinelAuth(tb, SentinelAuth{})
}

// StartSentinelAuth is StartSentinel with passwords: the master and the
// Sentinel each demand their own. Master().Client and URL carry them.
func StartSentinelAuth(tb testing.TB, auth SentinelAuth) *Sentinel {
	tb.Helper()
	if auth.SentinelUser != "" && auth.SentinelPassword == "" {
		tb.Fatalf("redistest: SentinelAuth.SentinelUser %q needs a SentinelPassword", auth.SentinelUser)
	}
	lookPath(tb, "redis-server")
	master := &Server{dir: tb.TempDir(), pass: auth.MasterPassword}
	if auth.MasterPassword != "" {
		master.args = []string{"--requirepass", auth.MasterPassword}
	}
	master = launch(tb, master)
	sentinel := launch(tb, &Server{dir: tb.TempDir(), sentinelOf: master, user: auth.SentinelUser, pass: auth.SentinelPassword})
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
	c := redis.NewSentinelClient(&redis.Options{
		Addr:       s.sentinel.Addr(),
		Username:   s.sentinel.user,
		Password:   s.sentinel.pass,
		MaxRetries: -1,
	})
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

// URL returns a redis.ParseFailoverURL URL for the master via the Sentinel:
// for StartSentinelAuth, with the Sentinel's user and password in the user
// info and the master's password as the password parameter.
func (s *Sentinel) URL() string {
	q := url.Values{"master_name": {sentinelMasterName}}
	if s.master.pass != "" {
		q.Set("password", s.master.pass)
	}
	userinfo := ""
	if s.sentinel.pass != "" {
		userinfo = url.UserPassword(s.sentinel.user, s.sentinel.pass).String() + "@"
	}
	return "redis://" + userinfo + s.SentinelAddr() + "?" + q.Encode()
}

// Master returns the master server, for outage tests and FlushAll.
func (s *Sentinel) Master() *Server { return s.master }
