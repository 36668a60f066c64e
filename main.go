// Command qlik-token-broker is a sidecar that hands Qlik Cloud
// user-impersonation tokens to an OEM web app's browsers and backends: it
// verifies the app's session JWT, maps it to a Qlik user, and serves a cached
// token for that user, calling the tenant about once per token lifetime.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/internal/admin"
	"github.com/qtb-dev/qlik-token-broker/internal/config"
	"github.com/qtb-dev/qlik-token-broker/internal/telemetry"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Set at build time with -ldflags "-X main.version=... -X main.revision=...".
var (
	version  = "dev"
	revision = "unknown"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "qlik-token-broker:", err)
		}
		os.Exit(1)
	}
}

const usage = `qlik-token-broker hands Qlik Cloud user-impersonation tokens to an OEM web app.

Usage:
  qlik-token-broker [serve] [flags]   run the broker (configuration from QTB_* variables or flags)
  qlik-token-broker demo [flags]      run it against an in-process fake tenant, printing a session token
  qlik-token-broker healthcheck        exit 0 when the local broker answers /healthz (for HEALTHCHECK)
  qlik-token-broker clients <command>  list, get, create, update and delete the tenant's OAuth clients, their secrets and consent
  qlik-token-broker provision [flags]  make a tenant ready: impersonation client, consent, tenants-file entry, Kubernetes Secret
  qlik-token-broker groups <user>      show a user's groups as the tenant sees them (which ones the groups sync manages)
  qlik-token-broker version           print the version

Run "qlik-token-broker serve -h" or "qlik-token-broker demo -h" for the flags.
`

// run is the whole program: main only adds the process environment.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		cfg, err := config.Load(args, getenv)
		if errors.Is(err, flag.ErrHelp) {
			config.PrintFlags(stdout, "serve", config.Default())
			return nil
		}
		if err != nil {
			return fmt.Errorf("invalid configuration:\n%w", indent(err))
		}
		hook, _ := ctx.Value(listenHookKey{}).(listenHook)
		return serve(ctx, cfg, stderr, hook)
	case "demo":
		return demo(ctx, args, getenv, stdout, stderr)
	case "healthcheck":
		return healthcheck(ctx, args, getenv, stderr)
	case "clients":
		return admin.Clients(ctx, args, getenv, stdout, stderr)
	case "provision":
		return admin.Provision(ctx, args, getenv, stdout)
	case "groups":
		return admin.Groups(ctx, args, getenv, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "qlik-token-broker %s (%s)\n", version, revision)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// indent puts each joined error on its own indented line.
func indent(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}

func newLogger(w io.Writer, cfg config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.Level()}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// listenHookKey lets tests learn the bound addresses of a run started with
// port 0.
type listenHookKey struct{}

type listenHook func(api, metrics net.Addr)

// serve runs the broker until ctx is done, then drains it. onListen, when
// not nil, learns the bound addresses once both listeners are up.
func serve(ctx context.Context, cfg config.Config, stderr io.Writer, onListen listenHook) error {
	log := newLogger(stderr, cfg)
	for _, w := range cfg.Warnings() {
		log.Warn("configuration warning", "warning", w)
	}

	// Started first and stopped last, so the spans of the final requests
	// are flushed; every client that traces is built from it.
	tel, err := telemetry.New(ctx, cfg.Tracing, version, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			log.Warn("tracing: flushing spans at exit failed", "err", err)
		}
	}()

	sc := cfg.SessionConfig()
	sc.Logger = log
	// The groups claim is the tenant's (tenants-file reloads included):
	// the broker, built below, knows it.
	var groupsOf atomic.Pointer[broker.Broker]
	sc.GroupsClaim = func(tenant string) string {
		if b := groupsOf.Load(); b != nil {
			return b.GroupsClaim(tenant)
		}
		return ""
	}
	verifier, err := session.NewVerifier(ctx, sc)
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	defer verifier.Close()

	upstreamClient := tel.HTTPClient(cfg.UpstreamHTTPClient())
	tenants, err := cfg.BrokerTenants(upstreamClient)
	if err != nil {
		return err
	}

	reg := metrics.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: version, Revision: revision})

	var (
		shared  broker.Shared
		limiter broker.SharedLimiter
	)
	if cfg.RedisEnabled() {
		cache.SetRedisLogger(log)
		opts := cfg.RedisOptions()
		opts.OnStateChange = func(degraded bool) {
			if degraded {
				m.RedisDegraded.Set(1)
				log.Warn("redis unreachable: serving from the in-process cache and the tenant until it returns")
			} else {
				m.RedisDegraded.Set(0)
				log.Info("redis is back")
			}
		}
		rdb, err := cache.NewRedis(opts)
		if err != nil {
			return fmt.Errorf("QTB_REDIS_URL: %w", err)
		}
		defer rdb.Close()
		if err := rdb.Ping(ctx); err != nil {
			// Redis is a soft dependency: misses go to the tenant.
			log.Warn("redis not reachable at start; serving from the in-process cache and the tenant until it is", "err", err)
		}
		shared = rdb
		if cfg.UpstreamSharedRatePerMinute > 0 {
			limiter = rdb
		}
	}
	keyring, err := cfg.Keyring()
	if err != nil {
		return fmt.Errorf("QTB_CACHE_KEY: %w", err)
	}
	if keyring == nil && shared != nil {
		log.Warn("QTB_CACHE_KEY is not set: tokens are stored in Redis unsealed")
	}

	bc := cfg.BrokerConfig()
	bc.Tenants, bc.Shared, bc.Limiter, bc.Keyring, bc.Metrics, bc.Logger, bc.Tracer = tenants, shared, limiter, keyring, m, log, tel.Tracer()
	b, err := broker.New(bc)
	if err != nil {
		return err
	}
	defer b.Close()
	groupsOf.Store(b)
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		if err := b.Run(runCtx); err != nil {
			log.Error("invalidation listener stopped", "err", err)
		}
	}()
	defer func() { stopRun(); <-runDone }()
	hup, stopHUP := notifyHUP()
	defer stopHUP()
	var tenantsHUP chan os.Signal
	if cfg.TenantsFile != "" {
		tenantsHUP = make(chan os.Signal, 1)
		watchDone := make(chan struct{})
		reload := func(raw []byte) ([]broker.Tenant, error) { return cfg.ReloadTenants(raw, upstreamClient) }
		go func() {
			defer close(watchDone)
			watchTenants(runCtx, cfg.TenantsFile, reload, b, log, 2*time.Second, tenantsHUP)
		}()
		defer func() { stopRun(); <-watchDone }()
	}

	var serviceVerifier *session.Verifier
	if cfg.ServiceEnabled() {
		sc := cfg.ServiceConfig()
		sc.Logger = log
		if serviceVerifier, err = session.NewVerifier(ctx, sc); err != nil {
			return fmt.Errorf("service credentials: %w", err)
		}
		defer serviceVerifier.Close()
	}
	hupDone := make(chan struct{})
	go func() {
		defer close(hupDone)
		relayHUP(runCtx, hup, tenantsHUP, log, verifier, serviceVerifier)
	}()
	defer func() { stopRun(); <-hupDone }()
	ac := cfg.APIConfig()
	ac.Broker, ac.Verifier, ac.Ready, ac.ServiceVerifier, ac.Metrics, ac.Logger = b, verifier, verifier.Ready, serviceVerifier, m, log
	api := broker.NewAPI(ac)

	apiLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("QTB_LISTEN: %w", err)
	}
	metricsLn, err := net.Listen("tcp", cfg.MetricsListen)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("QTB_METRICS_LISTEN: %w", err)
	}
	apiSrv := newServer(tel.Handler(api), log)
	metricsMux := http.NewServeMux()
	metricsMux.Handle("GET /metrics", metrics.Handler(reg))
	metricsMux.Handle("GET /jwks.json", b.JWKSHandler())
	metricsSrv := newServer(metricsMux, log)

	errc := make(chan error, 2)
	go func() { errc <- apiSrv.Serve(broker.Listener(apiLn)) }()
	go func() { errc <- metricsSrv.Serve(broker.Listener(metricsLn)) }()
	log.Info("listening", "api", apiLn.Addr().String(), "metrics", metricsLn.Addr().String(),
		"tenants", b.TenantIDs(), "redis", shared != nil, "sealed", keyring != nil, "version", version)
	if onListen != nil {
		onListen(apiLn.Addr(), metricsLn.Addr())
	}

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	case serveErr = <-errc:
		log.Error("server failed", "err", serveErr)
	}
	// A fresh context: the signal context is already done.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	err = errors.Join(apiSrv.Shutdown(sctx), metricsSrv.Shutdown(sctx))
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return errors.Join(serveErr, err)
	}
	return err
}

// newServer returns an http.Server with timeouts: net/http has none by
// default, which lets slow clients hold connections forever.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    broker.ServerMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// healthcheck probes a running broker, for container HEALTHCHECKs in images
// without a shell or curl. It exits non-zero unless /healthz answers 200.
func healthcheck(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	listen := envOr(getenv, "QTB_LISTEN", config.Default().Listen)
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("healthcheck: QTB_LISTEN: %w", err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", "http://"+net.JoinHostPort(host, port)+"/healthz", "URL to probe")
	timeout := fs.Duration("timeout", 3*time.Second, "probe timeout")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *target, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d", *target, resp.StatusCode)
	}
	return nil
}
