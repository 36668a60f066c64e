// Command baseline is the ceiling the load generator compares the broker
// with: a bare echo server answering GET /v1/token with a fixed JSON body of
// the size of a broker token response, and nothing else (no session
// verification, no cache, no metrics). It is started by `go run ./bench`, as
// its own process like the broker, and logs the same JSON "listening" line
// on stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	size := flag.Int("body-size", 1000, "bytes of the JSON response body")
	flag.Parse()

	body := fixedBody(*size)
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.GET("/v1/token", func(c echo.Context) error {
		return c.JSONBlob(http.StatusOK, body)
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// The broker's server timeouts, so the two servers differ only in the
	// handler.
	srv := &http.Server{
		Handler:           e,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    32 << 10,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	slog.New(slog.NewJSONHandler(os.Stderr, nil)).Info("listening", "api", ln.Addr().String(), "body_bytes", len(body))

	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// fixedBody returns a token-response-shaped JSON object of exactly size
// bytes (at least the size of its fixed fields).
func fixedBody(size int) []byte {
	const head = `{"access_token":"`
	const tail = `","token_type":"bearer","scope":"user_default","expires_at":"2030-01-01T00:00:00.000Z","expires_in":21540}`
	n := max(size-len(head)-len(tail), 0)
	return []byte(head + strings.Repeat("x", n) + tail)
}
