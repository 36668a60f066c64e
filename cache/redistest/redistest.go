// Package redistest runs real redis-server processes for tests: on free
// loopback ports, without persistence, killed when the test ends (or, on
// Linux, when the test binary dies). Outage tests can stop a server and
// start it again on the same port.
//
// Start runs a single server; StartTLS one that speaks only TLS and wants
// an ACL user; StartCluster a Redis Cluster; StartSentinel a master watched
// by a Sentinel.
package redistest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// startAttempts covers the race between releasing a free port and
	// redis-server binding it.
	startAttempts = 3
	// readyWithin is how long a starting server may take to answer PING.
	readyWithin = 5 * time.Second
	// logTail is how much of the server's output failure messages quote.
	logTail = 2048
)

// Server is a redis-server process owned by a test.
type Server struct {
	port int
	args []string // extra arguments
	dir  string   // redis-server's --dir, so nothing lands in the package
	log  syncBuffer

	// Set by StartCluster: run as a cluster node with this bus port.
	cluster bool
	busPort int
	// Set by StartSentinel: run as a Sentinel monitoring this master, with
	// these lines added to its configuration.
	sentinelOf   *Server
	sentinelConf string
	// Set by StartTLS: serve TLS only.
	tls *tlsFiles
	// The credentials clients need: StartTLS's ACL user, a
	// StartSentinelAuth master's or Sentinel's password (and user).
	user, pass string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// Start runs redis-server on 127.0.0.1 on a free port with persistence off
// and extraArgs appended, waits until it answers PING, and stops it when the
// test ends. The test fails at once if redis-server is not installed.
func Start(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	lookPath(tb, "redis-server")
	return launch(tb, &Server{args: extraArgs, dir: tb.TempDir()})
}

func lookPath(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		tb.Fatalf("redistest: %s not found: install the Debian package redis-server (bash .ci/run does this): %v", name, err)
	}
}

// launch starts s on free ports, retrying on new ones, and stops it when
// the test ends.
func launch(tb testing.TB, s *Server) *Server {
	tb.Helper()
	tb.Cleanup(s.Stop)
	var err error
	for range startAttempts {
		if s.port, err = freePort(); err != nil {
			tb.Fatalf("redistest: find a free port: %v", err)
		}
		if s.cluster {
			if s.busPort, err = freePort(); err != nil {
				tb.Fatalf("redistest: find a free port: %v", err)
			}
		}
		if err = s.start(); err == nil {
			return s
		}
	}
	tb.Fatalf("redistest: start redis-server: %v\n%s", err, s.log.tail(logTail))
	return nil
}

// Addr returns the server's address, "127.0.0.1:PORT".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// URL returns the server's URL for database 0: "redis://127.0.0.1:PORT/0",
// for a StartTLS server "rediss://USER:PASS@127.0.0.1:PORT/0", and for a
// StartSentinelAuth master "redis://:PASS@127.0.0.1:PORT/0".
func (s *Server) URL() string {
	scheme := "redis://"
	if s.tls != nil {
		scheme = "rediss://"
	}
	if s.pass == "" {
		return scheme + s.Addr() + "/0"
	}
	return scheme + url.UserPassword(s.user, s.pass).String() + "@" + s.Addr() + "/0"
}

// Client returns a client for database 0, closed when the test ends. It
// dials once per attempt and retries once, so it fails fast while the server
// is stopped and reconnects after Restart. For a StartTLS server it uses
// TLS and the ACL user; for a StartSentinelAuth master, its password.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	o := s.options()
	o.DialerRetries = 1
	o.MaxRetries = 1
	o.ContextTimeoutEnabled = true
	c := redis.NewClient(o)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Server) options() *redis.Options {
	o := &redis.Options{Addr: s.Addr(), Username: s.user, Password: s.pass}
	if s.tls != nil {
		o.TLSConfig = s.tls.clientConfig()
	}
	return o
}

// FlushAll deletes every key in every database.
func (s *Server) FlushAll(tb testing.TB) {
	tb.Helper()
	o := s.options()
	o.MaxRetries = -1
	c := redis.NewClient(o)
	defer c.Close()
	if err := c.FlushAll(tb.Context()).Err(); err != nil {
		tb.Fatalf("redistest: FLUSHALL: %v\n%s", err, s.log.tail(logTail))
	}
}

// Stop kills the server, for outage tests, and waits for it to exit.
// Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd, s.exited = nil, nil
}

// Restart starts the server again on the same port, stopping it first if it
// is running. Data is not kept.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		tb.Fatalf("redistest: restart redis-server on %s: %v\n%s", s.Addr(), err, s.log.tail(logTail))
	}
}

// start runs redis-server on s.port and waits until it answers. On failure
// the process is gone.
func (s *Server) start() error {
	args, err := s.commandLine()
	if err != nil {
		return err
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Stdout = &s.log
	cmd.Stderr = &s.log
	cmd.SysProcAttr = sysProcAttr()
	fmt.Fprintf(&s.log, "--- redistest: redis-server %q\n", args)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()

	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	if err := s.waitReady(exited); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// commandLine returns redis-server's arguments for s on its current ports.
func (s *Server) commandLine() ([]string, error) {
	if s.sentinelOf != nil {
		// Sentinel needs a config file it can rewrite; it holds everything.
		conf := filepath.Join(s.dir, "sentinel.conf")
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %q\n"+
			"sentinel monitor %s 127.0.0.1 %d 1\n",
			s.port, s.dir, sentinelMasterName, s.sentinelOf.port)
		text += s.sentinelConf
		if s.sentinelOf.pass != "" {
			text += fmt.Sprintf("sentinel auth-pass %s %q\n", sentinelMasterName, s.sentinelOf.pass)
		}
		switch {
		case s.user != "":
			text += fmt.Sprintf("user default off\nuser %s on %q ~* &* +@all\n", s.user, ">"+s.pass)
		case s.pass != "":
			text += fmt.Sprintf("requirepass %q\n", s.pass)
		}
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			return nil, err
		}
		return append([]string{conf, "--sentinel"}, s.args...), nil
	}
	args := []string{
		"--save", "",
		"--appendonly", "no",
		"--bind", "127.0.0.1",
		"--protected-mode", "no",
		"--dir", s.dir,
	}
	if s.tls != nil {
		args = append(args,
			"--port", "0",
			"--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", s.tls.cert,
			"--tls-key-file", s.tls.key,
			"--tls-ca-cert-file", s.tls.ca,
			"--tls-auth-clients", "no",
		)
	} else {
		args = append(args, "--port", strconv.Itoa(s.port))
	}
	if s.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", // in --dir
			"--cluster-node-timeout", "2000",
			"--cluster-port", strconv.Itoa(s.busPort),
		)
	}
	return append(args, s.args...), nil
}

// waitReady polls until the server answers PING, it exits, or readyWithin
// passes. Any reply counts: a server started with --requirepass answers
// NOAUTH.
func (s *Server) waitReady(exited <-chan struct{}) error {
	deadline := time.NewTimer(readyWithin)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if ping(s.Addr(), s.tls) == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("redis-server exited")
		case <-deadline.C:
			return fmt.Errorf("redis-server did not answer PING within %v", readyWithin)
		case <-tick.C:
		}
	}
}

// ping sends an inline PING and reads one reply line, over TLS when tf is
// not nil.
func ping(addr string, tf *tlsFiles) error {
	dialer := &net.Dialer{Timeout: 100 * time.Millisecond}
	var conn net.Conn
	var err error
	if tf != nil {
		conn, err = tls.DialWithDialer(dialer, "tcp", addr, tf.clientConfig())
	} else {
		conn, err = dialer.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	_, err = bufio.NewReader(conn).ReadString('\n')
	return err
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer collects the server's output; exec copies into it from its own
// goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.buf.Bytes()
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return "redis-server output (tail):\n" + string(out)
}
