// Command bench is the load generator of qlik-token-broker. It starts the
// real pieces on 127.0.0.1 by itself — broker processes built from this
// repository, a redis-server, the fake Qlik tenant (in process) and a bare
// echo server as the baseline — drives closed-loop load (to find each
// scenario's peak) and then constant-rate load at half that peak (for
// latency) with vegeta, and reports throughput, latency percentiles, errors,
// upstream token calls, and the broker's CPU and RSS. Everything is bounded
// in time and count and stops by itself.
//
//	go run ./bench -out bench/results                  # the suite, about 7 minutes on 2 cores
//	go run ./bench -quick -out /tmp/bench              # a 1-minute smoke run
//	go run ./bench -from bench/results/results.json -markdown docs/benchmarks.md
//	go run ./bench -only memory -out bench/results/memory   # the memory step alone, 2 minutes
//	go run ./bench -from bench/results/results.json -memory-from bench/results/memory/results.json -markdown docs/benchmarks.md
//	go run ./bench -day -out bench/results/day       # a compressed working day (docs/capacity.md), 10 minutes
//	go run ./bench -day-search -markdown docs/capacity.md   # the carrying limit (search + the day at it), about 9 minutes
//
// The run writes results.json and PNG plots to -out. With -markdown it also
// rewrites the generated section of that file (between its BEGIN/END
// GENERATED markers, keeping the prose around it) and writes the plots to
// the img directory next to it. Numbers are reported, never judged: the
// command fails only when it cannot measure.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	out         string
	from        string
	memoryFrom  string // -memory-from: the memory step of a later run
	markdown    string
	quick       bool
	duration    time.Duration
	warmup      time.Duration
	concurrency int
	users       int
	coldLatency time.Duration
	memUsers    []int
	rateFactor  float64
	replicas    int
	warmConc    int
	serverProcs int
	genProcs    int
	pin         bool
	goBench     bool
	benchTime   string
	only        map[string]bool // nil: everything
	serverEnv   []string        // extra KEY=VALUE for every server process
	args        []string
	dayRun      bool // -day: the compressed day (day.go) instead of the suite
	day         dayOptions
}

// runs reports whether the part name (a scenario, "memory" or "gobench")
// is selected.
func (o options) runs(name string) bool { return o.only == nil || o.only[name] }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{args: args}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.out, "out", "bench/results", "directory for results.json and the PNG plots")
	fs.StringVar(&o.from, "from", "", "render an earlier results.json instead of measuring")
	fs.StringVar(&o.memoryFrom, "memory-from", "", "with -from: take the memory step from this later results.json (a run with -only memory)")
	fs.StringVar(&o.markdown, "markdown", "", "markdown file whose generated section is rewritten (plots go to img/ beside it)")
	fs.BoolVar(&o.quick, "quick", false, "1-minute smoke run: 3s phases, 200 hot users, RSS at 1k and 10k users, no testing.B")
	fs.DurationVar(&o.duration, "duration", 25*time.Second, "length of each measured phase (two per scenario)")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured closed-loop load before each scenario's phases")
	fs.IntVar(&o.concurrency, "concurrency", 32, "closed-loop workers (connections) when finding the peak")
	fs.IntVar(&o.users, "users", 1000, "hot users (distinct session tokens) of the cached scenarios")
	fs.DurationVar(&o.coldLatency, "cold-latency", 50*time.Millisecond, "fake tenant latency in the cold-users scenario")
	mem := fs.String("mem-users", "1000,10000,100000", "cached-user counts at which broker RSS is read")
	fs.Float64Var(&o.rateFactor, "rate-factor", 0.5, "constant-rate phase at this fraction of the measured peak")
	fs.IntVar(&o.replicas, "replicas", 3, "broker processes sharing Redis in the replicas scenario")
	fs.IntVar(&o.warmConc, "warm-concurrency", 32, "concurrent first requests when warming caches")
	fs.IntVar(&o.serverProcs, "server-procs", 0, "GOMAXPROCS of broker and baseline processes (0: Go's default, nproc)")
	fs.IntVar(&o.genProcs, "gen-procs", 0, "GOMAXPROCS of this generator (0: Go's default, nproc)")
	fs.BoolVar(&o.pin, "pin", false, "pin servers and redis-server to CPU 0 and this generator to the other CPUs (taskset), so neither side's latency is the other's scheduling; GOMAXPROCS follows")
	fs.BoolVar(&o.goBench, "gobench", true, "also run the testing.B benchmarks of session, cache and broker")
	fs.StringVar(&o.benchTime, "benchtime", "1s", "-benchtime for the testing.B benchmarks")
	serverEnv := fs.String("server-env", "", "extra environment of broker and baseline processes, comma-separated KEY=VALUE (e.g. GOGC=400)")
	only := fs.String("only", "", "comma-separated parts to run (default all): baseline,l1,redis,cold,replicas,memory,gobench")
	fs.BoolVar(&o.dayRun, "day", false, "run the compressed day (day.go, docs/capacity.md) instead of the suite")
	fs.IntVar(&o.day.users, "day-users", 2000, "-day: the user population")
	fs.Float64Var(&o.day.compression, "day-compression", 72, "-day: time compression factor, in (1, 240] (-day-search: default 144)")
	fs.Float64Var(&o.day.from, "day-from", 7, "-day: simulated hour the day starts")
	fs.Float64Var(&o.day.to, "day-to", 19, "-day: simulated hour the day ends")
	fs.IntVar(&o.day.quota, "day-quota", 100, "-day: the tenant's Tier-2 quota, token calls a simulated minute")
	fs.Float64Var(&o.day.flushAt, "day-flush", 9.5, "-day: simulated hour of the Redis FLUSHALL (outside the day: none)")
	fs.Float64Var(&o.day.rollAt, "day-roll", 14.5, "-day: simulated hour of the rolling restart (outside the day: none)")
	fs.BoolVar(&o.day.search, "day-search", false, "search the largest population with 0 × 429 and first-token p99 under -day-wait (the day from -day-search-from to -day-search-until at each step), then run the whole day at it; with -markdown, rewrite that file's generated section (docs/capacity.md); with -from, re-render a day-search.json")
	fs.IntVar(&o.day.searchMin, "day-search-min", 1000, "-day-search: smallest population tried")
	fs.IntVar(&o.day.searchMax, "day-search-max", 64000, "-day-search: largest population tried")
	fs.IntVar(&o.day.searchSteps, "day-search-steps", 5, "-day-search: most populations measured, in [1, 12]")
	fs.Float64Var(&o.day.searchFrom, "day-search-from", 8, "-day-search: simulated hour each step starts (visits begun before it are left out)")
	fs.Float64Var(&o.day.searchUntil, "day-search-until", 9.75, "-day-search: simulated hour each step stops (the morning wave and the flush are before it)")
	fs.DurationVar(&o.day.waitGoal, "day-wait", 2*time.Second, "-day-search: a step passes when the first-token wait p99 is under this (and 0 × 429)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.day.search && !set["day-compression"] {
		o.day.compression = 144 // the whole page in under 10 minutes (docs/capacity.md)
	}
	if o.quick { // explicit flags win over -quick
		for name, v := range map[string]string{
			"duration": "3s", "warmup": "500ms", "users": "200",
			"mem-users": "1000,10000", "gobench": "false",
		} {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					return o, err
				}
			}
		}
	}
	for f := range strings.SplitSeq(*mem, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("-mem-users: %q is not a positive count", f)
		}
		o.memUsers = append(o.memUsers, n)
	}
	for kv := range strings.SplitSeq(*serverEnv, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return o, fmt.Errorf("-server-env: %q is not KEY=VALUE", kv)
		}
		o.serverEnv = append(o.serverEnv, kv)
	}
	parts := []string{scBaseline, scL1, scRedis, scCold, scReplicas, "memory", "gobench"}
	for f := range strings.SplitSeq(*only, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !slices.Contains(parts, f) {
			return o, fmt.Errorf("-only: unknown part %q (want %s)", f, strings.Join(parts, ","))
		}
		if o.only == nil {
			o.only = map[string]bool{}
		}
		o.only[f] = true
	}
	slices.Sort(o.memUsers)
	o.memUsers = slices.Compact(o.memUsers)
	switch {
	case o.memoryFrom != "" && o.from == "":
		return o, errors.New("-memory-from needs -from (the run whose other parts are rendered)")
	case o.duration <= 0 || o.duration > 10*time.Minute:
		return o, errors.New("-duration must be in (0, 10m]")
	case o.warmup < 0 || o.warmup > time.Minute:
		return o, errors.New("-warmup must be in [0, 1m]")
	case o.concurrency < 1 || o.concurrency > 1024:
		return o, errors.New("-concurrency must be in [1, 1024]")
	case o.users < 1 || o.users > 1_000_000:
		return o, errors.New("-users must be in [1, 1e6]")
	case len(o.memUsers) > 0 && o.memUsers[len(o.memUsers)-1] > 1_000_000:
		return o, errors.New("-mem-users must be at most 1e6")
	case o.rateFactor <= 0 || o.rateFactor > 1:
		return o, errors.New("-rate-factor must be in (0, 1]")
	case o.replicas < 1 || o.replicas > 8:
		return o, errors.New("-replicas must be in [1, 8]")
	case o.warmConc < 1 || o.warmConc > 1024:
		return o, errors.New("-warm-concurrency must be in [1, 1024]")
	case o.coldLatency < 0 || o.coldLatency > 5*time.Second:
		return o, errors.New("-cold-latency must be in [0, 5s]")
	case o.day.users < 1 || o.day.users > 1_000_000:
		return o, errors.New("-day-users must be in [1, 1e6]")
	case !(o.day.compression > 1 && o.day.compression <= 240):
		// Above 80, QTB_REFRESH_AHEAD is 70s (daySettings); the token
		// lifetime, 6h/c, must exceed it.
		return o, errors.New("-day-compression must be in (1, 240]")
	case !(o.day.from >= 0 && o.day.from < o.day.to && o.day.to <= 24):
		return o, errors.New("-day-from and -day-to must be hours with 0 <= from < to <= 24")
	case o.day.quota < 1:
		return o, errors.New("-day-quota must be at least 1")
	case o.day.search && !(o.day.searchMin >= 1 && o.day.searchMin <= o.day.searchMax && o.day.searchMax <= 1_000_000):
		return o, errors.New("-day-search-min and -day-search-max must satisfy 1 <= min <= max <= 1e6")
	case o.day.search && (o.day.searchSteps < 1 || o.day.searchSteps > 12):
		return o, errors.New("-day-search-steps must be in [1, 12]")
	case o.day.search && !(o.day.searchFrom >= o.day.from && o.day.searchFrom < o.day.searchUntil && o.day.searchUntil <= o.day.to):
		return o, errors.New("-day-search-from and -day-search-until must be hours with -day-from <= from < until <= -day-to")
	case o.day.waitGoal <= 0:
		return o, errors.New("-day-wait must be positive")
	}
	return o, nil
}

// run is the whole command: main only adds the signals and the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.day.search {
		return runDaySearch(ctx, o, stdout, stderr)
	}
	if o.dayRun {
		return runDay(ctx, o, stdout, stderr)
	}
	if o.from != "" {
		r, err := readResults(o.from)
		if err != nil {
			return err
		}
		if o.memoryFrom != "" {
			m, err := readResults(o.memoryFrom)
			if err != nil {
				return err
			}
			takeMemory(r, m)
		}
		return publish(o, r, stdout, false)
	}
	if o.genProcs > 0 {
		runtime.GOMAXPROCS(o.genProcs)
	}
	if o.pin {
		if _, err := pinCPUs(o.genProcs); err != nil {
			return err
		}
	}
	r, err := measureAll(ctx, o, stderr)
	if r == nil || (err != nil && len(r.Scenarios) == 0) {
		return err // nothing measured: keep any earlier results
	}
	if perr := publish(o, r, stdout, true); perr != nil {
		return errors.Join(err, perr)
	}
	return err
}

// publish writes what a run measured: results.json (when fresh) and plots
// to -out, the table to stdout, and the -markdown section with its plots.
func publish(o options, r *Results, stdout io.Writer, fresh bool) error {
	if fresh {
		path, err := writeResults(o.out, r)
		if err != nil {
			return err
		}
		if err := writePlots(o.out, r); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s and plots to %s\n\n", path, o.out)
	}
	fmt.Fprintln(stdout, renderTables(r, ""))
	if o.markdown != "" {
		img := filepath.Join(filepath.Dir(o.markdown), "img")
		if err := writePlots(img, r); err != nil {
			return err
		}
		if err := writeMarkdown(o.markdown, r, "img"); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "updated %s and %s/*.png\n", o.markdown, img)
	}
	return nil
}

// Scenario names, in report order.
const (
	scBaseline = "baseline"
	scL1       = "l1"
	scRedis    = "redis"
	scCold     = "cold"
	scReplicas = "replicas"
)

// suite holds what the scenarios share.
type suite struct {
	o        options
	log      io.Writer
	tmp      string
	broker   string // binary
	baseline string // binary
	redis    *redisServer
	fast     *qliktest.Tenant // no latency: hot scenarios and memory
	slow     *qliktest.Tenant // -cold-latency: cold scenario
	client   qliktest.OAuthClient
	hmac     []byte
	cacheKey string
	hot      *sessions
	warmer   *warmer
	r        *Results
}

func (s *suite) logf(format string, a ...any) {
	fmt.Fprintf(s.log, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

// measureAll runs every scenario. It returns the results gathered so far
// with an error when something prevented measuring; a scenario that fails
// is recorded in its Error and the others still run.
func measureAll(ctx context.Context, o options, log io.Writer) (*Results, error) {
	started := time.Now()
	s := &suite{o: o, log: log, warmer: newWarmer(o.warmConc)}
	s.r = &Results{
		Machine: machine(),
		Settings: Settings{
			Command:             "go run ./bench " + strings.Join(o.args, " "),
			Quick:               o.quick,
			PhaseSeconds:        o.duration.Seconds(),
			WarmupSeconds:       o.warmup.Seconds(),
			Concurrency:         o.concurrency,
			HotUsers:            o.users,
			ColdLatencyMS:       float64(o.coldLatency) / float64(time.Millisecond),
			Replicas:            o.replicas,
			WarmConcurrency:     o.warmConc,
			RateFactor:          o.rateFactor,
			ServerGOMAXPROCS:    o.serverProcs,
			ServerEnv:           o.serverEnv,
			GeneratorGOMAXPROCS: runtime.GOMAXPROCS(0),
			ServerCPUs:          serverCPUs,
			Sealed:              true,
			Note: "generator (vegeta + in-process fake tenant), servers and redis-server share the machine's CPUs; " +
				"latency includes the generator's own scheduling",
		},
		Started: started.UTC().Format(time.RFC3339),
	}
	s.r.Settings.Command = strings.TrimSpace(s.r.Settings.Command)
	defer func() { s.r.Seconds = time.Since(started).Seconds() }()

	cleanup, err := s.setup(ctx)
	defer cleanup()
	if err != nil {
		return s.r, err
	}
	s.r.Machine.RedisVersion = s.redis.version

	if err := s.hotScenarios(ctx); err != nil {
		finish(s.r)
		return s.r, err
	}
	if o.runs(scCold) {
		s.coldScenario(ctx)
	}
	if o.runs(scReplicas) {
		s.replicasScenario(ctx)
	}
	if ctx.Err() != nil {
		finish(s.r)
		return s.r, ctx.Err()
	}
	if o.runs("memory") {
		s.memory(ctx)
	}
	if o.goBench && o.runs("gobench") && ctx.Err() == nil {
		s.logf("testing.B benchmarks (-benchtime %s)", o.benchTime)
		s.r.GoBench = runGoBench(ctx, o.benchTime)
	}
	finish(s.r)
	return s.r, ctx.Err()
}

// setup builds the binaries and starts Redis and the tenants. The returned
// cleanup stops whatever was started.
func (s *suite) setup(ctx context.Context) (cleanup func(), err error) {
	var stops []func()
	cleanup = func() {
		for _, f := range slices.Backward(stops) {
			f()
		}
	}
	if s.tmp, err = os.MkdirTemp("", "qtb-bench-"); err != nil {
		return cleanup, err
	}
	stops = append(stops, func() { os.RemoveAll(s.tmp) })

	root, err := moduleRoot(ctx)
	if err != nil {
		return cleanup, err
	}
	if s.r.Settings.BrokerSource, err = sourceDigest(root); err != nil {
		return cleanup, err
	}
	s.logf("building the broker (%s) and the baseline in %s", s.r.Settings.BrokerSource, s.tmp)
	s.broker = filepath.Join(s.tmp, "qlik-token-broker")
	s.baseline = filepath.Join(s.tmp, "baseline")
	if err := build(ctx, root, ".", s.broker); err != nil {
		return cleanup, err
	}
	if err := build(ctx, root, "./bench/baseline", s.baseline); err != nil {
		return cleanup, err
	}

	if s.redis, err = startRedis(ctx, s.tmp); err != nil {
		return cleanup, err
	}
	stops = append(stops, s.redis.stop)

	if s.fast, err = qliktest.NewOnAddr("127.0.0.1:0"); err != nil {
		return cleanup, err
	}
	stops = append(stops, s.fast.Close)
	if s.slow, err = qliktest.NewOnAddr("127.0.0.1:0", qliktest.WithLatency(s.o.coldLatency)); err != nil {
		return cleanup, err
	}
	stops = append(stops, s.slow.Close)
	s.client = qliktest.OAuthClient{ID: "bench-client", Secret: randomHex(32)}
	s.fast.AddClient(s.client)
	s.slow.AddClient(s.client)

	s.hmac = []byte(randomHex(32)) // the broker takes the secret's text as the key
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	s.cacheKey = "bench:" + base64.StdEncoding.EncodeToString(key)

	s.hot, err = s.newUsers(s.fast, s.o.users)
	return cleanup, err
}

// newUsers adds n users to tenant and mints their session tokens.
func (s *suite) newUsers(tenant *qliktest.Tenant, n int) (*sessions, error) {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = tenant.AddUser(qliktest.User{Name: "bench user " + strconv.Itoa(i)}).ID
	}
	return mintSessions(s.hmac, ids)
}

// brokerEnv is the environment of a broker process: ours without any QTB_
// or Go runtime setting, plus the broker's configuration.
func (s *suite) brokerEnv(tenant *qliktest.Tenant) []string {
	env := s.cleanEnv()
	return append(env,
		"QTB_TENANT_URL="+tenant.URL(),
		"QTB_CLIENT_ID="+s.client.ID,
		"QTB_CLIENT_SECRET="+s.client.Secret,
		"QTB_SESSION_HMAC_SECRET="+string(s.hmac),
		"QTB_REDIS_URL="+s.redis.url(),
		"QTB_CACHE_KEY="+s.cacheKey,
		"QTB_LOG_LEVEL=info",
		"QTB_LOG_FORMAT=json",
		"QTB_SHUTDOWN_TIMEOUT=5s",
		// No per-user limit: hot users here ask hundreds of times a second.
		"QTB_USER_RATE=0",
	)
}

func (s *suite) cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "QTB_") || slices.Contains([]string{"GOMAXPROCS", "GOGC", "GOMEMLIMIT", "GODEBUG"}, k) {
			continue
		}
		env = append(env, kv)
	}
	if s.o.serverProcs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(s.o.serverProcs))
	}
	return append(env, s.o.serverEnv...)
}

// startBrokers starts n broker processes on tenant, sharing Redis.
func (s *suite) startBrokers(ctx context.Context, n int, tenant *qliktest.Tenant, extra ...string) ([]*proc, error) {
	env := append(s.brokerEnv(tenant), extra...) // later entries win in exec
	var ps []*proc
	for i := range n {
		p, err := startServer(ctx, fmt.Sprintf("broker-%d", i), s.broker,
			[]string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, env)
		if err != nil {
			stopAll(ps)
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

func stopAll(ps []*proc) {
	for _, p := range ps {
		p.stop()
	}
}

func urlsOf(ps []*proc) []string {
	var us []string
	for _, p := range ps {
		us = append(us, tokenURL(p))
	}
	return us
}

func metricsOf(ps []*proc) []string {
	var as []string
	for _, p := range ps {
		as = append(as, p.metrics)
	}
	return as
}

func pidsOf(ps []*proc) []int {
	var ids []int
	for _, p := range ps {
		ids = append(ids, p.pid())
	}
	return ids
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// machine describes this machine.
func machine() Machine {
	m := Machine{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command(goTool(), "env", "GOVERSION").Output(); err == nil {
		m.GoVersion = strings.TrimSpace(string(out)) // the toolchain that built the broker
	}
	return m
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
