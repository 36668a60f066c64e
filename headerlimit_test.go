package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
)

// rawExchange sends raw bytes to addr and returns the response.
func rawExchange(t *testing.T, addr, raw string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// requestOfSize is a GET /healthz whose request line and headers are
// exactly n bytes, the blank line ending them included.
func requestOfSize(n int) string {
	head := "GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Pad: "
	tail := "\r\n\r\n"
	return head + strings.Repeat("a", n-len(head)-len(tail)) + tail
}

// TestHeaderLimitIsTheDocumentedOne: through a real listener, request
// line and headers of exactly 32 KiB pass and one byte more is a 431
// with the JSON error body; a request that is not HTTP is a JSON 400.
func TestHeaderLimitIsTheDocumentedOne(t *testing.T) {
	p := startInProc(t, inProcOptions{})
	addr := hostPort(p.api)
	for _, tc := range []struct {
		name   string
		raw    string
		status int
		code   string
	}{
		{"at the limit", requestOfSize(broker.MaxHeaderBytes), 200, ""},
		{"one byte over", requestOfSize(broker.MaxHeaderBytes + 1), 431, "request_header_too_large"},
		{"far over", requestOfSize(broker.MaxHeaderBytes + 8192), 431, "request_header_too_large"},
		{"not HTTP", "GET /healthz HTTP/1.1\r\nHost broker\r\n\r\n", 400, "bad_request"},
		{"no Host", "GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"},
	} {
		resp, body := rawExchange(t, addr, tc.raw)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, body, tc.status)
			continue
		}
		if tc.code == "" {
			continue
		}
		var eb struct{ Error, Message string }
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" || json.Unmarshal(body, &eb) != nil || eb.Error != tc.code || eb.Message == "" {
			t.Errorf("%s: %s %q, want the JSON error %s", tc.name, ct, body, tc.code)
		}
	}
	// A keep-alive connection still answers normally through the wrapper.
	resp, body := rawExchange(t, addr, "GET /healthz HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Errorf("a plain request: %d %s", resp.StatusCode, body)
	}
}
