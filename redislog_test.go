package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestLogsStayJSONWhileRedisIsDown: with Redis unreachable, go-redis's own
// complaints (it writes plain text to stderr by default) come through the
// broker's logger: the log stream is JSON lines only, and they are in it.
func TestLogsStayJSONWhileRedisIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := startInProc(t, inProcOptions{env: map[string]string{"QTB_REDIS_URL": "redis://" + down + "/0", "QTB_LOG_FORMAT": "json"}})
	user := p.tenant.AddUser(qliktest.User{Name: "Ada", Status: "active"})
	for i := range 3 {
		if resp, body := p.do(t, "GET", "/v1/token", p.session(t, user.ID), nil, nil); resp.StatusCode != 200 {
			t.Fatalf("request %d with Redis down: %d %s", i, resp.StatusCode, body)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.logs.String(), "redis client: ") {
		if time.Now().After(deadline) {
			t.Fatalf("go-redis's own log lines did not reach the broker's log:\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i, line := range strings.Split(strings.TrimSpace(p.logs.String()), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Errorf("log line %d is not JSON: %q", i+1, line)
		}
	}
}
