package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// envFunc turns a map into a getenv.
func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestInvalidConfigurationNamesEveryProblem(t *testing.T) {
	const sentinel = "s3cr3t-SENTINEL-value"
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"serve", "--scope", "user_default"}, envFunc(map[string]string{
		"QTB_CLIENT_SECRET":       sentinel,
		"QTB_SESSION_HMAC_SECRET": sentinel,
		"QTB_SESSION_JWKS_URL":    "https://idp.example.com/jwks",
		"QTB_LISTEN":              "not-an-address",
		"QTB_TENANT_URL":          "http://tenant.example.com",
		"QTB_USER_LOOKUP":         "email",
		"QTB_SESSION_LEEWAY":      "soon",
		"QTB_REDIS_URL":           "memcached://" + sentinel + "@localhost",
		"QTB_CORS_ORIGINS":        "https://*.example.com,https://ok.example.com",
		"QTB_LOG_FORMAT":          "xml",
	}), &stdout, &stderr)
	if err == nil {
		t.Fatal("run accepted an invalid configuration")
	}
	msg := err.Error()
	for _, name := range []string{"QTB_CLIENT_ID", "QTB_LISTEN", "QTB_TENANT_URL", "QTB_USER_LOOKUP", "QTB_SESSION_LEEWAY",
		"QTB_SESSION_HMAC_SECRET", "QTB_REDIS_URL", "QTB_CORS_ORIGINS", "QTB_LOG_FORMAT"} {
		if !strings.Contains(msg, name) {
			t.Errorf("error does not name %s:\n%s", name, msg)
		}
	}
	if strings.Contains(msg+stdout.String()+stderr.String(), sentinel) {
		t.Errorf("a secret value leaked into the error or output:\n%s", msg)
	}
}

// TestDemo runs the demo as a newcomer would: it runs the curl lines the demo
// prints, in a shell.
func TestDemo(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listening := make(chan struct{})
	var apiAddr net.Addr
	ctx = context.WithValue(ctx, listenHookKey{}, listenHook(func(api, metrics net.Addr) { apiAddr = api; close(listening) }))
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, envFunc(nil), &stdout, &stderr)
	}()
	select {
	case <-listening:
	case err := <-done:
		t.Fatalf("demo exited: %v\n%s", err, stderr.String())
	}

	var curls []string
	for line := range strings.SplitSeq(stdout.String(), "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "curl ") {
			curls = append(curls, l)
		}
	}
	if len(curls) != 2 {
		t.Fatalf("want 2 curl lines in the demo output, got:\n%s", stdout.String())
	}
	out, err := exec.Command("bash", "-c", curls[0]+` -w '\n%{http_code}'`).Output()
	if err != nil {
		t.Fatalf("first curl: %v", err)
	}
	trimmed := strings.TrimSpace(string(out))
	cut := strings.LastIndexByte(trimmed, '\n')
	body, code := trimmed[:max(cut, 0)], trimmed[cut+1:]
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if code != "200" || json.Unmarshal([]byte(body), &tok) != nil || tok.AccessToken == "" || tok.ExpiresIn < 21000 {
		t.Fatalf("first curl: status %s body %s", code, body)
	}
	out, err = exec.Command("bash", "-c", curls[1]).Output()
	if err != nil {
		t.Fatalf("second curl: %v", err)
	}
	var me struct{ ID, Name string }
	if json.Unmarshal(out, &me) != nil || me.Name != "Ada Lovelace" || !strings.Contains(stdout.String(), me.ID) {
		t.Fatalf("users/me says %s", out)
	}

	// The container HEALTHCHECK: 0 against the running broker, non-zero
	// against a port where nothing listens.
	if err := run(context.Background(), []string{"healthcheck", "--url", "http://" + apiAddr.String() + "/healthz"}, envFunc(nil), io.Discard, io.Discard); err != nil {
		t.Errorf("healthcheck against the running broker: %v", err)
	}
	if err := run(context.Background(), []string{"healthcheck"}, envFunc(map[string]string{"QTB_LISTEN": freeAddr(t)}), io.Discard, io.Discard); err == nil {
		t.Error("healthcheck succeeded with no broker listening")
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("demo did not shut down cleanly: %v", err)
	}
}

// freeAddr returns a loopback address where nothing listens.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// brokerProcess is the broker binary running as a child process.
type brokerProcess struct {
	cmd    *exec.Cmd
	api    string
	stderr *syncBuffer
	exited chan error
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "qlik-token-broker")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

var listeningLine = regexp.MustCompile(`"msg":"listening","api":"([^"]+)"`)

func startBroker(t *testing.T, bin string, env map[string]string) *brokerProcess {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	pr, pw := io.Pipe()
	p := &brokerProcess{cmd: cmd, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.stderr.Write(append(sc.Bytes(), '\n'))
			if m := listeningLine.FindSubmatch(sc.Bytes()); m != nil {
				select {
				case addr <- string(m[1]):
				default:
				}
			}
		}
	}()
	go func() { p.exited <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	select {
	case p.api = <-addr:
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("broker exited before listening: %v\n%s", err, p.stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("broker did not start listening:\n%s", p.stderr.String())
	}
	return p
}

func (p *brokerProcess) token(t *testing.T, session string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+p.api+"/v1/token", nil)
	req.Header.Set("Authorization", "Bearer "+session)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("token: %d %s\n%s", resp.StatusCode, body, p.stderr.String())
	}
	return string(body)
}

// TestServeProcessesShareRedis runs two broker processes on one real Redis
// against the fake tenant over HTTP.
func TestServeProcessesShareRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	rs := redistest.Start(t)
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-e2e", Secret: "e2e-client-secret"})
	ada := tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Status: "active"})

	dir := t.TempDir()
	secretFile := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secretFile, []byte(oc.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hmacKey := "an-hmac-key-of-at-least-32-bytes-long!"
	env := map[string]string{
		"QTB_TENANT_URL":          tn.URL(),
		"QTB_CLIENT_ID":           oc.ID,
		"QTB_CLIENT_SECRET_FILE":  secretFile,
		"QTB_SESSION_HMAC_SECRET": hmacKey,
		"QTB_USER_CLAIM":          "qlik_subject",
		"QTB_USER_LOOKUP":         "subject",
		"QTB_REDIS_URL":           rs.URL(),
		"QTB_LOG_LEVEL":           "debug",
	}
	session, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "app-user-1", "qlik_subject": ada.Subject, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(hmacKey))
	if err != nil {
		t.Fatal(err)
	}

	a := startBroker(t, bin, env)
	first := a.token(t, session)
	if u, err := tn.TokenUser(first); err != nil || u.ID != ada.ID {
		t.Fatalf("token acts for %v (%v), want %s", u.ID, err, ada.ID)
	}
	if n := tn.UserTokenCalls(ada.ID); n != 1 {
		t.Fatalf("first request: %d upstream calls, want 1", n)
	}
	if again := a.token(t, session); again != first || tn.UserTokenCalls(ada.ID) != 1 {
		t.Fatalf("second request on A: same token %v, upstream calls %d", again == first, tn.UserTokenCalls(ada.ID))
	}

	b := startBroker(t, bin, env)
	if fromB := b.token(t, session); fromB != first {
		t.Fatal("replica B served a different token")
	}
	if n := tn.UserTokenCalls(ada.ID); n != 1 {
		t.Fatalf("replica B made an upstream call: %d calls", n)
	}

	// Nothing secret in either process's logs, even at debug level.
	for _, p := range []*brokerProcess{a, b} {
		logs := p.stderr.String()
		for _, s := range []string{oc.Secret, hmacKey, first, session} {
			if strings.Contains(logs, s) {
				t.Fatalf("a secret or token appears in the logs:\n%s", logs)
			}
		}
	}

	// SIGTERM drains and exits 0.
	for _, p := range []*brokerProcess{a, b} {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			if err != nil {
				t.Errorf("exit after SIGTERM: %v\n%s", err, p.stderr.String())
			}
			p.exited <- err
		case <-time.After(20 * time.Second):
			t.Fatal("no exit after SIGTERM")
		}
	}
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestProxyStreamsLargeResponses sends a 50 MB export through the broker
// process's reverse proxy and checks its RSS stays flat: nothing buffers it.
func TestProxyStreamsLargeResponses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-big", Secret: "big-client-secret"})
	ada := tn.AddUser(qliktest.User{Name: "Ada", Status: "active"})
	const size = 50 << 20
	target, _ := url.Parse(tn.URL())
	fake := httputil.NewSingleHostReverseProxy(target)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/export" {
			fake.ServeHTTP(w, r)
			return
		}
		if _, err := tn.TokenUser(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")); err != nil {
			w.WriteHeader(401)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(front.Close)

	hmacKey := "an-hmac-key-of-at-least-32-bytes-long!"
	p := startBroker(t, bin, map[string]string{
		"QTB_TENANT_URL": front.URL, "QTB_CLIENT_ID": oc.ID, "QTB_CLIENT_SECRET": oc.Secret,
		"QTB_SESSION_HMAC_SECRET": hmacKey,
	})
	sess, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": ada.ID, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(hmacKey))
	get := func(path string) (int, int64) {
		req, _ := http.NewRequest("GET", "http://"+p.api+path, nil)
		req.Header.Set("Authorization", "Bearer "+sess)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, _ := io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, n
	}
	if code, _ := get("/v1/qlik/api/v1/users/me"); code != 200 {
		t.Fatalf("warm-up: %d\n%s", code, p.stderr.String())
	}
	before := rssKiB(t, p.cmd.Process.Pid)
	code, n := get("/v1/qlik/api/v1/export")
	after := rssKiB(t, p.cmd.Process.Pid)
	t.Logf("50 MB through the proxy: broker RSS %d KiB before, %d KiB after", before, after)
	if code != 200 || n != size {
		t.Fatalf("export: status %d, %d bytes", code, n)
	}
	if after-before > 16<<10 {
		t.Fatalf("RSS grew by %d KiB streaming 50 MB: the proxy buffers", after-before)
	}
}

// TestThreeProcessesColdUsers: three broker processes sharing one real
// Redis, 50 cold users, 300 concurrent requests per user spread over the
// three. The tenant sees exactly one token call per user, and every
// response carries its own user's token.
func TestThreeProcessesColdUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and sends 15,000 requests")
	}
	bin := buildBinary(t)
	rs := redistest.Start(t)
	tn, err := qliktest.New(qliktest.WithLatency(50 * time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-3p", Secret: "three-process-secret"})
	hmacKey := "an-hmac-key-of-at-least-32-bytes-long!"
	env := map[string]string{
		"QTB_TENANT_URL": tn.URL(), "QTB_CLIENT_ID": oc.ID, "QTB_CLIENT_SECRET": oc.Secret,
		"QTB_SESSION_HMAC_SECRET": hmacKey, "QTB_REDIS_URL": rs.URL(),
		"QTB_CACHE_KEY": "k1:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
	}
	procs := []*brokerProcess{startBroker(t, bin, env), startBroker(t, bin, env), startBroker(t, bin, env)}

	const users, perUser = 50, 300
	ids := make([]string, users)
	sessions := make([]string, users)
	for i := range users {
		ids[i] = tn.AddUser(qliktest.User{Name: fmt.Sprintf("user%02d", i), Status: "active"}).ID
		sessions[i], _ = jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": ids[i], "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(hmacKey))
	}
	type job struct{ user, proc int }
	var jobs []job
	for u := range users {
		for i := range perUser {
			jobs = append(jobs, job{u, i % 3})
		}
	}
	rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100}}
	defer client.CloseIdleConnections()

	var (
		mu       sync.Mutex
		owner    = map[string]int{}
		failures []string
		wg       sync.WaitGroup
	)
	work := make(chan job)
	for range 150 {
		wg.Go(func() {
			for j := range work {
				req, _ := http.NewRequest("GET", "http://"+procs[j.proc].api+"/v1/token", nil)
				req.Header.Set("Authorization", "Bearer "+sessions[j.user])
				req.Header.Set("Accept", "text/plain")
				resp, err := client.Do(req)
				var tok string
				code := 0
				if err == nil {
					raw, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					tok, code = string(raw), resp.StatusCode
				}
				mu.Lock()
				switch prev, seen := owner[tok]; {
				case code != 200:
					failures = append(failures, fmt.Sprintf("user %d on process %d: %d %v", j.user, j.proc, code, err))
				case seen && prev != j.user:
					failures = append(failures, fmt.Sprintf("user %d got user %d's token", j.user, prev))
				default:
					owner[tok] = j.user
				}
				mu.Unlock()
			}
		})
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed; first: %s", len(failures), len(jobs), failures[0])
	}
	if n := tn.Calls(qliktest.EndpointToken); n != users {
		t.Fatalf("token calls = %d for %d users over 3 processes", n, users)
	}
	for tok, u := range owner {
		if got, err := tn.TokenUser(tok); err != nil || got.ID != ids[u] {
			t.Fatalf("a token served to user %d acts for %v (%v)", u, got.ID, err)
		}
	}
	t.Logf("%d requests over 3 processes: %d token calls, %d distinct tokens", len(jobs), tn.Calls(qliktest.EndpointToken), len(owner))
}
