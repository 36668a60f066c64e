package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
)

// MaxHeaderBytes is the most bytes of request line and headers the API
// accepts; beyond it the answer is 431. Give the http.Server
// ServerMaxHeaderBytes, not this: net/http reads 4096 bytes more than its
// MaxHeaderBytes.
const MaxHeaderBytes = 32 << 10

// ServerMaxHeaderBytes is the http.Server.MaxHeaderBytes that enforces
// MaxHeaderBytes.
const ServerMaxHeaderBytes = MaxHeaderBytes - 4096

// earlyRefusals are the answers net/http gives itself, before any handler
// runs, by status, as the caller sees them through Listener.
var earlyRefusals = map[int]apiError{
	http.StatusBadRequest: {status: http.StatusBadRequest, code: "bad_request",
		message: "the request is not valid HTTP"},
	http.StatusRequestHeaderFieldsTooLarge: {status: http.StatusRequestHeaderFieldsTooLarge, code: "request_header_too_large",
		message: fmt.Sprintf("the request line and headers exceed %d KiB", MaxHeaderBytes>>10)},
	http.StatusNotImplemented: {status: http.StatusNotImplemented, code: "not_implemented",
		message: "unsupported transfer encoding"},
	http.StatusHTTPVersionNotSupported: {status: http.StatusHTTPVersionNotSupported, code: "http_version_not_supported",
		message: "HTTP version not supported"},
}

// Listener wraps ln so that the refusals net/http writes itself before
// any handler runs (431 for headers over MaxHeaderBytes, 400 for a request
// that is not HTTP, 501 for an unknown transfer encoding) carry the JSON
// error body of every other answer instead of net/http's plain text.
func Listener(ln net.Listener) net.Listener { return refusalListener{ln} }

type refusalListener struct{ net.Listener }

func (l refusalListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &refusalConn{Conn: c}, nil
}

// refusalConn rewrites net/http's plain-text refusals, recognised by their
// exact form: one write of a status line, net/http's fixed error headers,
// and a body repeating the status line (for 501, a fixed text).
type refusalConn struct{ net.Conn }

const netHTTPErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

func (c *refusalConn) Write(p []byte) (int, error) {
	if out, ok := jsonRefusal(p); ok {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close after a 431, as it does on a bare
// TCP connection.
func (c *refusalConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom keeps sendfile and splice for response bodies: they are never
// refusals.
func (c *refusalConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func jsonRefusal(p []byte) ([]byte, bool) {
	rest, ok := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !ok {
		return nil, false
	}
	statusLine, body, ok := bytes.Cut(rest, []byte(netHTTPErrorHeaders))
	if !ok || len(statusLine) < 4 || bytes.Contains(statusLine, []byte("\r\n")) {
		return nil, false
	}
	status, err := strconv.Atoi(string(statusLine[:3]))
	if err != nil {
		return nil, false
	}
	if !bytes.Equal(body, statusLine) && status != http.StatusNotImplemented {
		return nil, false
	}
	ae, ok := earlyRefusals[status]
	if !ok {
		ae = apiError{status: status, code: "bad_request", message: "the request is not valid HTTP"}
	}
	b, err := json.Marshal(errorBody{Error: ae.code, Message: ae.message})
	if err != nil {
		return nil, false
	}
	head := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"+
		"X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\nContent-Length: %d\r\n\r\n",
		status, http.StatusText(status), len(b))
	return append([]byte(head), b...), true
}
