package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// rawRequest writes req on a fresh TCP connection to addr while reading the
// answer, so a server that answers before the request is fully sent (as it
// does for oversized headers) is seen answering. It returns the status code
// and how long the answer took.
func rawRequest(t *testing.T, addr string, req []byte) (int, time.Duration) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A correctness bound, not a benchmark: the answer must come at all.
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	go func() { _, _ = conn.Write(req) }() // fails once the server hangs up: expected
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to an oversized request: %v", err)
	}
	elapsed := time.Since(start)
	resp.Body.Close()
	return resp.StatusCode, elapsed
}

// TestOversizedHeaders: a 1 MB Authorization header and a 64 KB session
// cookie hit the server's 32 KiB header limit and get 431 without the
// server buffering them (memory stays bounded across 50 of them); a header
// under the server limit but over the 8 KiB token limit is a 401.
func TestOversizedHeaders(t *testing.T) {
	p := startInProc(t, inProcOptions{env: map[string]string{"QTB_SESSION_COOKIE": "app_session"}})
	addr := hostPort(p.api)

	bigAuth := []byte("GET /v1/token HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer " + strings.Repeat("A", 1<<20) + "\r\n\r\n")
	bigCookie := []byte("GET /v1/token HTTP/1.1\r\nHost: " + addr + "\r\nCookie: app_session=" + strings.Repeat("c", 64<<10) + "\r\n\r\n")
	for name, req := range map[string][]byte{"1 MB Authorization": bigAuth, "64 KB cookie": bigCookie} {
		code, took := rawRequest(t, addr, req)
		if code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("%s: status %d, want 431", name, code)
		}
		t.Logf("%s: 431 after %s", name, took)
	}

	// 50 more, 10 at a time: what the server allocates must not scale with
	// what the client sends (50 MB in all).
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		slowest time.Duration
		codes   = map[int]int{}
	)
	sem := make(chan struct{}, 10)
	for range 50 {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			code, took := rawRequest(t, addr, bigAuth)
			mu.Lock()
			codes[code]++
			slowest = max(slowest, took)
			mu.Unlock()
		})
	}
	wg.Wait()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if codes[431] != 50 {
		t.Fatalf("statuses %v, want 50 x 431", codes)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	heapGrowth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("50 x 1 MB headers: slowest answer %s, %d KiB allocated in all (%d KiB per request), live heap %+d KiB",
		slowest, allocated>>10, allocated/50>>10, heapGrowth>>10)
	// Generous bounds: reading each header whole would allocate at least
	// 1 MB per request (50 MB); the server stops at 32 KiB.
	if allocated > 25<<20 {
		t.Errorf("%d MiB allocated for 50 rejected requests: the server buffers oversized headers", allocated>>20)
	}
	if heapGrowth > 16<<20 {
		t.Errorf("live heap grew by %d MiB after 50 rejected requests", heapGrowth>>20)
	}

	// Under the server's limit but over the token limit: the session
	// layer refuses it, as JSON, without parsing it.
	for name, h := range map[string]map[string]string{
		"20 KB Authorization": {"Authorization": "Bearer " + strings.Repeat("A", 20<<10)},
		"9 KB cookie":         {"Cookie": "app_session=" + strings.Repeat("c", 9<<10)},
	} {
		resp, body := p.do(t, "GET", "/v1/token", "", h, nil)
		if resp.StatusCode != 401 || !strings.Contains(string(body), "token_too_large") {
			t.Errorf("%s: %d %s, want 401 token_too_large", name, resp.StatusCode, body)
		}
	}
	if n := p.tenant.Calls(qliktest.EndpointToken); n != 0 {
		t.Errorf("%d upstream calls", n)
	}
	// Still serving.
	if resp, body := p.do(t, "GET", "/healthz", "", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("/healthz after the flood: %d %s", resp.StatusCode, body)
	}
}

// TestSlowlorisIsCutOff: a client that sends its headers one byte at a time
// and never finishes is disconnected by the server (ReadHeaderTimeout).
func TestSlowlorisIsCutOff(t *testing.T) {
	p := startInProc(t, inProcOptions{})
	conn, err := net.Dial("tcp", hostPort(p.api))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	closed := make(chan error, 1)
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(conn) // returns when the server closes
		got <- b
		closed <- err
	}()
	head := []byte("GET /v1/token HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	if _, err := conn.Write(head); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second) // correctness bound; the server's timeout is 5s
	for {
		select {
		case err := <-closed:
			took := time.Since(start)
			b := <-got
			t.Logf("server closed the slow connection after %s (read err %v, %d bytes answered)", took, err, len(b))
			if len(b) > 0 && !bytes.HasPrefix(b, []byte("HTTP/1.1 4")) {
				t.Fatalf("the server answered a request it never fully received: %q", b)
			}
			return
		case <-deadline:
			t.Fatalf("the server still holds a connection that sent one header byte per 100ms for %s", time.Since(start))
		case <-tick.C:
			// Ignore write errors: the server may already have closed.
			_, _ = conn.Write([]byte("a"))
		}
	}
}

// TestRequestBodyLimit: a body over 64 KiB on POST /v1/token is a 413 JSON
// error before any session work; one at the limit is not.
func TestRequestBodyLimit(t *testing.T) {
	p := startInProc(t, inProcOptions{})
	ada := p.tenant.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Status: "active"})
	sess := p.session(t, ada.ID)

	for _, s := range []string{"", sess} {
		resp, body := p.do(t, "POST", "/v1/token", s, map[string]string{"Content-Type": "application/octet-stream"}, bytes.NewReader(make([]byte, 64<<10+1)))
		var eb struct{ Error, Message string }
		if resp.StatusCode != http.StatusRequestEntityTooLarge || json.Unmarshal(body, &eb) != nil || eb.Error != "request_too_large" {
			t.Errorf("64 KiB + 1 (session %v): %d %s, want 413 request_too_large", s != "", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("413 Content-Type %q", ct)
		}
	}
	if n := p.tenant.Calls(qliktest.EndpointToken); n != 0 {
		t.Fatalf("an oversized request reached the tenant %d times", n)
	}
	resp, body := p.do(t, "POST", "/v1/token", sess, nil, bytes.NewReader(make([]byte, 64<<10)))
	if resp.StatusCode != 200 {
		t.Fatalf("64 KiB body: %d %s, want 200", resp.StatusCode, body)
	}

	// A chunked body declares no length, so the 413 cannot come up front;
	// the handler never reads a body, so none of it is used, and the
	// request is answered on its session alone.
	resp, body = p.do(t, "POST", "/v1/token", "", nil, io.MultiReader(bytes.NewReader(make([]byte, 1<<20))))
	if resp.StatusCode != 401 && resp.StatusCode != 413 {
		t.Fatalf("chunked 1 MiB body without session: %d %s", resp.StatusCode, body)
	}
	t.Logf("chunked 1 MiB body without a session: %d", resp.StatusCode)
}

// TestMethodsAndSecurityHeaders: methods other than the routed ones are 405
// JSON; every answer of the API carries nosniff and no-referrer.
func TestMethodsAndSecurityHeaders(t *testing.T) {
	p := startInProc(t, inProcOptions{env: map[string]string{"QTB_CORS_ORIGINS": "https://app.example.com"}})
	ada := p.tenant.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Status: "active"})
	sess := p.session(t, ada.ID)

	for _, tc := range []struct {
		method, path, session string
		header                map[string]string
		status                int
		code                  string
	}{
		{"PUT", "/v1/token", sess, nil, 405, "method_not_allowed"},
		{"PATCH", "/v1/token", sess, nil, 405, "method_not_allowed"},
		{"PROPFIND", "/v1/token", sess, nil, 405, "method_not_allowed"},
		{"PUT", "/healthz", "", nil, 405, "method_not_allowed"},
		{"DELETE", "/readyz", "", nil, 405, "method_not_allowed"},
		{"GET", "/v1/tokens", sess, nil, 404, "not_found"},
		{"GET", "/v1/token/../../etc/passwd", sess, nil, 404, "not_found"},
		{"GET", "/metrics", "", nil, 404, "not_found"},
		{"GET", "/v1/token", "", nil, 401, "invalid_session"},
		{"GET", "/v1/token", sess, map[string]string{"Origin": "https://evil.example.com"}, 403, "origin_not_allowed"},
		{"GET", "/v1/token", sess, nil, 200, ""},
		{"GET", "/v1/token", sess, map[string]string{"Origin": "https://app.example.com", "Accept": "text/plain"}, 200, ""},
		{"OPTIONS", "/v1/token", "", map[string]string{"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}, 204, ""},
		{"DELETE", "/v1/token", sess, nil, 204, ""},
		{"GET", "/healthz", "", nil, 200, ""},
		{"GET", "/readyz", "", nil, 200, ""},
	} {
		resp, body := p.do(t, tc.method, tc.path, tc.session, tc.header, nil)
		name := tc.method + " " + tc.path
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", name, resp.StatusCode, body, tc.status)
			continue
		}
		if tc.code != "" {
			var eb struct{ Error, Message string }
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error != tc.code || eb.Message == "" {
				t.Errorf("%s: body %s, want {error: %s, message}", name, body, tc.code)
			}
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s (%d): security headers missing: %v", name, resp.StatusCode, resp.Header)
		}
		if tc.status == 405 && resp.Header.Get("Allow") == "" {
			t.Logf("%s: 405 without an Allow header", name)
		}
	}
	// net/http, not echo, answers requests it cannot parse (broker.Listener
	// gives them the JSON error body); they carry nothing from the request.
	code, _ := rawRequest(t, hostPort(p.api), []byte("GET /v1/token HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"))
	if code != 400 {
		t.Errorf("malformed header line: %d, want 400", code)
	}
}
