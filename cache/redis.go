package cache

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// Defaults applied by NewRedis. go-redis' own (5 s timeouts, 3 retries, 5 dial
// attempts per connection) make a Redis outage cost tens of seconds per
// command; a cache must fail fast so the caller can fall back.
const (
	DefaultRedisTimeout    = 500 * time.Millisecond
	DefaultRedisMaxRetries = 1
	// DefaultBreakerFailures is how many consecutive failures open the
	// breaker when RedisOptions.BreakerFailures is zero.
	DefaultBreakerFailures = 5
	// DefaultBreakerOpen is how long the breaker stays open before letting
	// one probe through, when RedisOptions.BreakerOpen is zero.
	DefaultBreakerOpen = 5 * time.Second
	// DefaultBreakerProbe is how often an open breaker PINGs Redis to
	// close as soon as it answers, when RedisOptions.BreakerProbe is zero.
	DefaultBreakerProbe = 100 * time.Millisecond
)

// Redis topologies, for RedisOptions.Mode.
const (
	ModeStandalone = "standalone"
	ModeCluster    = "cluster"
	ModeSentinel   = "sentinel"
)

// ErrUnavailable is returned, wrapped with the operation, while the circuit
// breaker is open (or half-open with its probe in flight): Redis failed
// BreakerFailures times in a row and is not being asked. It wraps
// gobreaker.ErrOpenState.
var ErrUnavailable = fmt.Errorf("redis unavailable: %w", gobreaker.ErrOpenState)

// RedisOptions configures NewRedis. Zero fields take the defaults noted; a
// field that is set wins over the same setting in the URL's query.
type RedisOptions struct {
	// Mode is ModeStandalone (when empty), ModeCluster or ModeSentinel.
	Mode string

	// URL is, by Mode:
	//
	//   - standalone: redis://[user:password@]host[:port][/db], or rediss://
	//     for TLS (redis.ParseURL). Required.
	//   - cluster: redis://[user:password@]host:port?addr=host2:port2&addr=...
	//     (redis.ParseClusterURL); the hosts are seed nodes. Optional when
	//     Addrs is set.
	//   - sentinel: redis://[user:password@]sentinelhost:port?master_name=mymaster&addr=sentinel2:port
	//     (redis.ParseFailoverURL). As in go-redis, the user info
	//     authenticates to the sentinels; the master's credentials are the
	//     username and password query parameters, or Username and Password.
	//     Optional when Addrs and MasterName are set.
	//
	// The user info runs to the last '@', so a password may hold unescaped
	// reserved characters; percent-encoding is decoded. Errors show the URL
	// with passwords redacted.
	URL string
	// Addrs adds cluster seed nodes (cluster) or sentinels (sentinel),
	// "host:port" each, to those in URL. Standalone takes URL only.
	Addrs []string
	// MasterName is the sentinel master's name, overriding the URL's
	// master_name. Sentinel mode only.
	MasterName string
	// Username overrides the data nodes' ACL user name when set.
	Username string
	// Password overrides the data nodes' password when set (e.g. from a
	// secret file).
	Password string
	// SentinelUsername overrides the ACL user name the client gives the
	// sentinels (the URL's user) when set. Redis sends a user name only
	// with a password: SentinelPassword or the URL's. Sentinel mode only.
	SentinelUsername string
	// SentinelPassword overrides the sentinels' own password (the URL's),
	// when set: their requirepass, or SentinelUsername's password. The
	// master's is Password. Sentinel mode only.
	SentinelPassword string
	// TLSCAFile is a PEM file of CA certificates to trust, instead of the
	// system roots, for a rediss:// URL. It is read once, by NewRedis.
	TLSCAFile string
	// TLSCA is the same as PEM bytes already read, for a caller that reads
	// its files once up front. Set at most one of TLSCAFile and TLSCA.
	TLSCA []byte
	// TLSInsecureSkipVerify turns off verification of the server's
	// certificate. For tests only.
	TLSInsecureSkipVerify bool

	// DialTimeout bounds each connection attempt; DefaultRedisTimeout when zero.
	DialTimeout time.Duration
	// ReadTimeout bounds each socket read; DefaultRedisTimeout when zero.
	ReadTimeout time.Duration
	// WriteTimeout bounds each socket write; DefaultRedisTimeout when zero.
	WriteTimeout time.Duration
	// PoolSize is the connection pool size (per node in a cluster);
	// go-redis' default when zero.
	PoolSize int
	// MaxRetries is how often a failed command is retried;
	// DefaultRedisMaxRetries when zero, -1 disables retries.
	MaxRetries int

	// BreakerFailures is how many consecutive failed commands open the
	// circuit breaker; DefaultBreakerFailures when zero.
	BreakerFailures uint32
	// BreakerOpen is how long the breaker stays open, failing every call
	// with ErrUnavailable, before one probe call is let through;
	// DefaultBreakerOpen when zero. The breaker usually closes sooner: see
	// BreakerProbe.
	BreakerOpen time.Duration
	// BreakerProbe is how often, while the breaker is open, Redis is sent a
	// PING (outside the breaker) that closes the breaker as soon as it is
	// answered; DefaultBreakerProbe when zero, and negative turns the PINGs
	// off. In Sentinel mode the Sentinels' +switch-master notice closes it
	// at once, PINGs or not.
	BreakerProbe time.Duration
	// OnStateChange, if set, is called with true when the breaker opens
	// and with false when a probe succeeds and it closes again. Calls come
	// in order, one at a time, on the goroutine of a Redis call after the
	// breaker's lock is released: it may call into Redis but should be
	// quick.
	OnStateChange func(degraded bool)
}

// Redis is the store shared by replicas, over a go-redis UniversalClient
// for a single node, Sentinel or Cluster. Errors are wrapped as
// "cache: redis <op>: ..." and never carry keys, values or passwords.
//
// Commands go through a circuit breaker: after BreakerFailures consecutive
// failures (errors and timeouts; not a miss, and not the caller's own
// cancellation) every call fails at once with ErrUnavailable for
// BreakerOpen, then one probe call decides whether Redis is back. A dead
// Redis thus costs one timeout per BreakerOpen rather than one per request.
// Meanwhile a PING every BreakerProbe, and in Sentinel mode a failover
// notice, close it as soon as Redis answers again (breaker.go). Ping and
// Client bypass the breaker.
type Redis struct {
	client   redis.UniversalClient
	breaker  atomic.Pointer[gobreaker.CircuitBreaker[struct{}]]
	degraded atomic.Bool
	notifier stateNotifier
	recovery recovery
}

// NewRedis builds a client from opts. It does not contact Redis: the broker
// must start, and report itself unready, while Redis is down.
//
// ContextTimeoutEnabled is always on, so a caller's deadline bounds every
// command, and a connection is dialled once per attempt rather than
// go-redis' default of five.
func NewRedis(opts RedisOptions) (*Redis, error) {
	newClient, sentinels, err := clientFor(opts)
	if err != nil {
		return nil, err
	}
	client := newClient()
	r := &Redis{client: client, notifier: stateNotifier{fn: opts.OnStateChange}}
	r.recovery.configure(opts, newClient, sentinels)
	failures := cmp.Or(opts.BreakerFailures, DefaultBreakerFailures)
	settings := gobreaker.Settings{
		Name:    "redis",
		Timeout: cmp.Or(opts.BreakerOpen, DefaultBreakerOpen),
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= failures
		},
		IsSuccessful: func(err error) bool { return err == nil || errors.Is(err, redis.Nil) },
		// do turns away contexts that are done before the call; a
		// cancellation during it is the caller leaving, not Redis failing.
		// A deadline passing during it is a failure: Redis was too slow.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
	}
	r.recovery.newBreaker = func() *gobreaker.CircuitBreaker[struct{}] {
		var cb *gobreaker.CircuitBreaker[struct{}]
		s := settings
		s.OnStateChange = func(_ string, from, to gobreaker.State) {
			if r.breaker.Load() == cb { // not one recover replaced
				r.breakerStateChanged(from, to)
			}
		}
		cb = gobreaker.NewCircuitBreaker[struct{}](s)
		return cb
	}
	r.breaker.Store(r.recovery.newBreaker())
	return r, nil
}

// breakerStateChanged runs under the breaker's lock; the user's callback
// runs later, from do (or from the recovery that closed the breaker).
func (r *Redis) breakerStateChanged(from, to gobreaker.State) {
	switch {
	case from == gobreaker.StateClosed && to == gobreaker.StateOpen:
		if r.degraded.CompareAndSwap(false, true) {
			r.notifier.push(true)
			r.startRecovery()
		}
	case to == gobreaker.StateClosed:
		if r.degraded.CompareAndSwap(true, false) {
			r.notifier.push(false)
		}
	}
}

// Degraded reports whether the circuit breaker is open or half-open, i.e.
// calls fail with ErrUnavailable until a probe succeeds.
func (r *Redis) Degraded() bool { return r.degraded.Load() }

// do runs fn through the breaker and wraps its error as "cache: redis op: ".
func (r *Redis) do(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cache: redis %s: %w", op, err)
	}
	_, err := r.breaker.Load().Execute(func() (struct{}, error) {
		err := fn(ctx)
		if err != nil && !errors.Is(err, redis.Nil) && errors.Is(ctx.Err(), context.Canceled) {
			// go-redis notices a cancellation only at its next deadline and
			// then reports a timeout; it was the caller who left.
			err = fmt.Errorf("%w (%w)", context.Canceled, err)
		}
		return struct{}{}, err
	})
	r.notifier.flush()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		return fmt.Errorf("cache: redis %s: %w", op, ErrUnavailable)
	}
	return fmt.Errorf("cache: redis %s: %w", op, err)
}

// Get returns the value stored under key, or ErrMiss when it is absent or
// expired.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	var s string
	err := r.do(ctx, "get", func(ctx context.Context) (err error) {
		// Result, not Bytes: Bytes aliases the reply string's memory, and
		// callers own what Get returns.
		s, err = r.client.Get(ctx, key).Result()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return nil, ErrMiss
	}
	if err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// Set stores value under key for ttl, truncated to whole milliseconds and at
// least one. A ttl <= 0 returns ErrInvalidTTL and stores nothing.
func (r *Redis) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if ttl <= 0 {
		return ErrInvalidTTL
	}
	return r.do(ctx, "set", func(ctx context.Context) error {
		return r.client.Set(ctx, key, value, redisTTL(ttl)).Err()
	})
}

// SetIfAbsent stores value under key for ttl unless the key holds a value
// (SET NX), and reports whether it stored it. A ttl <= 0 returns
// ErrInvalidTTL and stores nothing.
func (r *Redis) SetIfAbsent(ctx context.Context, key string, value []byte, ttl time.Duration) (stored bool, err error) {
	if ttl <= 0 {
		return false, ErrInvalidTTL
	}
	err = r.do(ctx, "set", func(ctx context.Context) (err error) {
		stored, err = r.client.SetNX(ctx, key, value, redisTTL(ttl)).Result()
		return err
	})
	return stored, err
}

// Delete removes key. Deleting an absent key is not an error.
func (r *Redis) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete", func(ctx context.Context) error {
		return r.client.Del(ctx, key).Err()
	})
}

// Ping checks that Redis answers, for readiness probes. It bypasses the
// circuit breaker, so it reports on Redis itself.
func (r *Redis) Ping(ctx context.Context) error {
	if err := r.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("cache: redis ping: %w", err)
	}
	return nil
}

// Client returns the underlying client, for features built on Redis beyond
// those offered here. Its commands bypass the circuit breaker.
func (r *Redis) Client() redis.UniversalClient { return r.client }

// Close stops the breaker's recovery and closes the client's connections.
func (r *Redis) Close() error {
	r.stopRecovery()
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("cache: redis close: %w", err)
	}
	return nil
}

// redisTTL truncates ttl to the millisecond resolution of SET ... PX, keeping
// at least 1 ms so a tiny positive ttl is not sent as "no expiry".
func redisTTL(ttl time.Duration) time.Duration {
	return max(ttl.Truncate(time.Millisecond), time.Millisecond)
}

// CheckRedisOptions reports what NewRedis would refuse in opts, without
// building a client: a configuration can be validated with no side
// effects. It reads TLSCAFile when set (TLSCA needs no read).
func CheckRedisOptions(opts RedisOptions) error {
	_, _, err := clientFor(opts)
	return err
}

// clientFor checks opts and returns the constructor of their go-redis
// client, by opts.Mode, and in Sentinel mode the client's options (for the
// breaker's recovery, which listens to the Sentinels too).
func clientFor(opts RedisOptions) (func() redis.UniversalClient, *redis.FailoverOptions, error) {
	switch opts.Mode {
	case "", ModeStandalone:
		if len(opts.Addrs) > 0 {
			return nil, nil, errors.New("cache: redis Addrs is for cluster and sentinel modes; standalone takes a URL")
		}
		if opts.URL == "" {
			return nil, nil, errors.New("cache: redis URL is required")
		}
		o, u, err := parseURL(opts.URL, redis.ParseURL)
		if err != nil {
			return nil, nil, err
		}
		if u.set {
			o.Username, o.Password = u.user, u.password
		}
		if err := tune(opts, shared{&o.Username, &o.Password, &o.TLSConfig, &o.DialTimeout, &o.ReadTimeout,
			&o.WriteTimeout, &o.PoolSize, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled}); err != nil {
			return nil, nil, err
		}
		return func() redis.UniversalClient { return redis.NewClient(o) }, nil, nil

	case ModeCluster:
		o := &redis.ClusterOptions{}
		if opts.URL != "" {
			var u userinfo
			var err error
			if o, u, err = parseURL(opts.URL, redis.ParseClusterURL); err != nil {
				return nil, nil, err
			}
			if u.set {
				o.Username, o.Password = u.user, u.password
			}
		}
		o.Addrs = append(o.Addrs, opts.Addrs...)
		if len(o.Addrs) == 0 {
			return nil, nil, errors.New("cache: redis cluster mode needs Addrs or a URL")
		}
		if err := tune(opts, shared{&o.Username, &o.Password, &o.TLSConfig, &o.DialTimeout, &o.ReadTimeout,
			&o.WriteTimeout, &o.PoolSize, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled}); err != nil {
			return nil, nil, err
		}
		return func() redis.UniversalClient { return redis.NewClusterClient(o) }, nil, nil

	case ModeSentinel:
		o := &redis.FailoverOptions{}
		if opts.URL != "" {
			var u userinfo
			var err error
			if o, u, err = parseURL(opts.URL, redis.ParseFailoverURL); err != nil {
				return nil, nil, err
			}
			if u.set {
				o.SentinelUsername, o.SentinelPassword = u.user, u.password
			}
		}
		o.SentinelAddrs = append(o.SentinelAddrs, opts.Addrs...)
		o.MasterName = cmp.Or(opts.MasterName, o.MasterName)
		if len(o.SentinelAddrs) == 0 || o.MasterName == "" {
			return nil, nil, errors.New("cache: redis sentinel mode needs sentinel Addrs or a URL, and a MasterName")
		}
		o.SentinelUsername = cmp.Or(opts.SentinelUsername, o.SentinelUsername)
		o.SentinelPassword = cmp.Or(opts.SentinelPassword, o.SentinelPassword)
		if err := tune(opts, shared{&o.Username, &o.Password, &o.TLSConfig, &o.DialTimeout, &o.ReadTimeout,
			&o.WriteTimeout, &o.PoolSize, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled}); err != nil {
			return nil, nil, err
		}
		return func() redis.UniversalClient { return redis.NewFailoverClient(o) }, o, nil
	}
	return nil, nil, fmt.Errorf("cache: redis Mode %q: want %s, %s or %s", opts.Mode, ModeStandalone, ModeCluster, ModeSentinel)
}

// shared points at the settings the three go-redis option types have in
// common, so tune sets them once for every topology.
type shared struct {
	username, password                 *string
	tls                                **tls.Config
	dialTimeout, readTimeout, wTimeout *time.Duration
	poolSize, maxRetries, dialRetries  *int
	contextTimeout                     *bool
}

// tune applies opts over what the URL gave, then the defaults: short
// timeouts, one retry, one dial per attempt, and context deadlines honoured.
func tune(opts RedisOptions, o shared) error {
	*o.username = cmp.Or(opts.Username, *o.username)
	*o.password = cmp.Or(opts.Password, *o.password)
	if err := configureTLS(o.tls, opts); err != nil {
		return err
	}
	*o.dialTimeout = cmp.Or(opts.DialTimeout, *o.dialTimeout, DefaultRedisTimeout)
	*o.readTimeout = cmp.Or(opts.ReadTimeout, *o.readTimeout, DefaultRedisTimeout)
	*o.wTimeout = cmp.Or(opts.WriteTimeout, *o.wTimeout, DefaultRedisTimeout)
	*o.poolSize = cmp.Or(opts.PoolSize, *o.poolSize)
	*o.maxRetries = cmp.Or(opts.MaxRetries, *o.maxRetries, DefaultRedisMaxRetries)
	*o.dialRetries = 1
	*o.contextTimeout = true
	return nil
}

// configureTLS applies the TLS options to the TLS configuration a rediss://
// URL produced; they are an error without one, since they would otherwise
// be silently ignored.
func configureTLS(cfg **tls.Config, opts RedisOptions) error {
	if *cfg == nil {
		if opts.TLSCAFile != "" || len(opts.TLSCA) > 0 || opts.TLSInsecureSkipVerify {
			return errors.New("cache: redis TLSCAFile, TLSCA and TLSInsecureSkipVerify need a rediss:// URL")
		}
		return nil
	}
	c := *cfg
	c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
	if opts.TLSInsecureSkipVerify {
		c.InsecureSkipVerify = true
	}
	pem, source := opts.TLSCA, "TLSCA"
	if opts.TLSCAFile != "" {
		if len(pem) > 0 {
			return errors.New("cache: redis TLSCAFile and TLSCA: set one, not both")
		}
		var err error
		if pem, err = os.ReadFile(opts.TLSCAFile); err != nil {
			return fmt.Errorf("cache: redis TLS CA file: %w", err)
		}
		source = "file " + opts.TLSCAFile
	}
	if len(pem) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("cache: redis TLS CA %s: no PEM certificates", source)
		}
		c.RootCAs = pool
	}
	return nil
}

// userinfo is the user info cut out of a URL.
type userinfo struct {
	set            bool
	user, password string
}

// parseURL runs a go-redis URL parser so that it cannot leak a password:
// the user info is cut out before any parser sees the URL, so no error can
// quote it, and error messages show the URL with its password and any
// password query parameter redacted.
func parseURL[T any](raw string, parse func(string) (T, error)) (T, userinfo, error) {
	var zero T
	// The user info runs from "://" to the last '@'. That over-reaches when
	// a query value holds '@', but never leaves part of a password behind,
	// even an unescaped one holding '/', '?' or '#'.
	start := 0
	if i := strings.Index(raw, "://"); i >= 0 {
		start = i + len("://")
	}
	at := strings.LastIndexByte(raw[start:], '@')
	if at < 0 {
		o, err := parse(raw)
		if err != nil {
			return zero, userinfo{}, fmt.Errorf("cache: redis URL %q: %w", redactQuery(raw), withoutURL(err))
		}
		return o, userinfo{}, nil
	}
	rawUserinfo, rest := raw[start:start+at], raw[start+at+1:]
	rawUser, rawPassword, hasPassword := strings.Cut(rawUserinfo, ":")
	// A lone user info is masked too: legacy URLs put the password there
	// (redis://password@host), and go-redis would read it as a user name.
	redacted := raw[:start] + "xxxxx@" + redactQuery(rest)
	if hasPassword {
		redacted = raw[:start] + rawUser + ":xxxxx@" + redactQuery(rest)
	}

	user, err := url.PathUnescape(rawUser)
	if err != nil {
		return zero, userinfo{}, fmt.Errorf("cache: redis URL %q: invalid percent-encoding in user name", redacted)
	}
	password, err := url.PathUnescape(rawPassword)
	if err != nil {
		return zero, userinfo{}, fmt.Errorf("cache: redis URL %q: invalid percent-encoding in password", redacted)
	}
	o, err := parse(raw[:start] + rest)
	if err != nil {
		return zero, userinfo{}, fmt.Errorf("cache: redis URL %q: %w", redacted, withoutURL(err))
	}
	return o, userinfo{set: true, user: user, password: password}, nil
}

// redactQuery masks the values of query parameters that carry passwords
// (the sentinel URL's password, for the master).
func redactQuery(s string) string {
	q := strings.IndexByte(s, '?')
	if q < 0 {
		return s
	}
	params := strings.Split(s[q+1:], "&")
	for i, p := range params {
		name, _, ok := strings.Cut(p, "=")
		if ok && strings.Contains(strings.ToLower(name), "password") {
			params[i] = name + "=xxxxx"
		}
	}
	return s[:q+1] + strings.Join(params, "&")
}

// withoutURL drops the URL a *url.Error quotes, which may hold a password
// query parameter; the message keeps what was wrong with it.
func withoutURL(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}
