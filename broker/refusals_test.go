package broker

import (
	"strings"
	"testing"
)

// TestJSONRefusalOnlyRewritesNetHTTPsOwn: the listener rewrites exactly
// net/http's early refusals; a handler's answer, however similar, passes.
func TestJSONRefusalOnlyRewritesNetHTTPsOwn(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" when left alone; else the JSON error code
	}{
		{"HTTP/1.1 431 Request Header Fields Too Large" + netHTTPErrorHeaders + "431 Request Header Fields Too Large", "request_header_too_large"},
		{"HTTP/1.1 400 Bad Request" + netHTTPErrorHeaders + "400 Bad Request", "bad_request"},
		{"HTTP/1.1 400 Bad Request: missing required Host header" + netHTTPErrorHeaders + "400 Bad Request: missing required Host header", "bad_request"},
		{"HTTP/1.1 501 Not Implemented" + netHTTPErrorHeaders + "Unsupported transfer encoding", "not_implemented"},
		{"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nDate: x\r\n\r\n400 Bad Request", ""},
		{"HTTP/1.1 400 Bad Request" + netHTTPErrorHeaders + "something a handler wrote", ""},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", ""},
		{"\x81\x05hello", ""},
	} {
		out, ok := jsonRefusal([]byte(tc.in))
		switch {
		case tc.want == "" && ok:
			t.Errorf("%q was rewritten to %q", tc.in, out)
		case tc.want != "" && (!ok || !strings.Contains(string(out), `"error":"`+tc.want+`"`) || !strings.Contains(string(out), "Content-Type: application/json")):
			t.Errorf("%q: %q, want the JSON error %s", tc.in, out, tc.want)
		}
	}
}
