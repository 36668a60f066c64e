package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// sessions holds one Authorization header per user, minted once: the
// generator spends no signing work during an attack.
type sessions struct {
	users   []string
	headers []http.Header
}

// mintSessions signs an HS256 session JWT for each user id, valid for a day.
func mintSessions(secret []byte, userIDs []string) (*sessions, error) {
	now := time.Now()
	s := &sessions{users: userIDs, headers: make([]http.Header, len(userIDs))}
	for i, id := range userIDs {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": id,
			"iat": now.Unix(),
			"exp": now.Add(24 * time.Hour).Unix(),
		}).SignedString(secret)
		if err != nil {
			return nil, err
		}
		s.headers[i] = http.Header{"Authorization": {"Bearer " + tok}}
	}
	return s, nil
}

func (s *sessions) len() int { return len(s.headers) }

// tokenURL is the endpoint under load on one server.
func tokenURL(p *proc) string { return "http://" + p.api + "/v1/token" }

// hotTargeter cycles over every user on every server: request k goes to
// server k mod S with user (k div S) mod N, so each server sees every user
// and the round-robin is exact.
func hotTargeter(urls []string, s *sessions) vegeta.Targeter {
	var n atomic.Uint64
	nu, ns := uint64(s.len()), uint64(len(urls))
	return func(t *vegeta.Target) error {
		k := n.Add(1) - 1
		t.Method, t.URL, t.Header, t.Body = http.MethodGet, urls[k%ns], s.headers[(k/ns)%nu], nil
		return nil
	}
}

// coldTargeter sends each user once, in order, across phases; when the pool
// runs out the attack stops with vegeta.ErrNoTargets (counted as an error,
// so an undersized pool cannot pass for a hot cache).
type coldTargeter struct {
	url  string
	s    *sessions
	next atomic.Uint64
}

func (c *coldTargeter) targeter() vegeta.Targeter {
	return func(t *vegeta.Target) error {
		k := c.next.Add(1) - 1
		if k >= uint64(c.s.len()) {
			return vegeta.ErrNoTargets
		}
		t.Method, t.URL, t.Header, t.Body = http.MethodGet, c.url, c.s.headers[k], nil
		return nil
	}
}

func (c *coldTargeter) used() int { return int(min(c.next.Load(), uint64(c.s.len()))) }

// load is the shape of one attack.
type load struct {
	closed      bool // closed loop: concurrency workers, each sending as soon as it has its answer
	concurrency int
	rate        int // constant rate, per second (open loop)
	duration    time.Duration
}

// maxOpenLoopWorkers bounds the workers vegeta may add to keep a constant
// rate while answers are slow (it adds one whenever all are busy, so latency
// is not hidden by waiting to send: no coordinated omission).
const maxOpenLoopWorkers = 1024

// newLoadClient is the HTTP client of one scenario's attacks, shared by its
// phases so connections are reused; closing its idle connections at the
// end lets the servers shut down at once (net/http waits 5s for a
// connection that was dialed but never used).
func newLoadClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil, // loopback only, never through a proxy
			DialContext:         (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: maxOpenLoopWorkers,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// attack runs one bounded attack and summarizes it. Only loopback servers
// are ever targets (startServer checks).
func attack(ctx context.Context, name string, client *http.Client, tr vegeta.Targeter, l load) Phase {
	opts := []func(*vegeta.Attacker){
		vegeta.Client(client),
		vegeta.MaxBody(0), // drain, do not keep: the generator's garbage competes for the same cores
	}
	var pacer vegeta.Pacer
	ph := Phase{Codes: map[string]int{}}
	if l.closed {
		opts = append(opts, vegeta.Workers(uint64(l.concurrency)), vegeta.MaxWorkers(uint64(l.concurrency)))
		pacer = vegeta.ConstantPacer{} // zero: as fast as the workers go
		ph.Mode, ph.Concurrency = "closed-loop", l.concurrency
	} else {
		opts = append(opts, vegeta.Workers(uint64(max(l.concurrency, 1))), vegeta.MaxWorkers(maxOpenLoopWorkers))
		pacer = vegeta.ConstantPacer{Freq: max(l.rate, 1), Per: time.Second}
		ph.Mode, ph.TargetRate = "constant-rate", float64(max(l.rate, 1))
	}
	atk := vegeta.NewAttacker(opts...)
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()

	var m vegeta.Metrics
	seen := map[string]bool{}
	for res := range atk.Attack(tr, pacer, l.duration, name) {
		m.Add(res)
		if res.Error != "" {
			ph.Errors++
			if !seen[res.Error] && len(ph.ErrorSample) < 5 {
				seen[res.Error] = true
				ph.ErrorSample = append(ph.ErrorSample, res.Error)
			}
		}
	}
	m.Close()
	ph.Requests = int(m.Requests)
	ph.Codes = m.StatusCodes
	ph.Throughput = m.Throughput
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	ph.Latency = Latency{
		Mean: ms(m.Latencies.Mean),
		P50:  ms(m.Latencies.P50),
		P90:  ms(m.Latencies.P90),
		P99:  ms(m.Latencies.P99),
		P999: ms(m.Latencies.Quantile(0.999)),
		Max:  ms(m.Latencies.Max),
	}
	return ph
}

// observed is what a phase measures around the attack: the servers' CPU
// and memory, Redis's CPU, our own CPU and the tenant's token calls.
type observed struct {
	pids     []int
	redisPID int
	calls    func() int
	metrics  []string // brokers' metrics listeners; none for the baseline
}

func (o observed) run(ctx context.Context, name string, client *http.Client, tr vegeta.Targeter, l load) (Phase, error) {
	before := make([]usage, len(o.pids))
	for i, pid := range o.pids {
		u, err := readUsage(pid)
		if err != nil {
			return Phase{}, err
		}
		before[i] = u
	}
	redis0, _ := readUsage(o.redisPID)
	self0, _ := readUsage(0)
	busy0, _ := machineBusy()
	var hist0 map[float64]float64
	if len(o.metrics) > 0 {
		hist0, _ = tokenHistogram(ctx, o.metrics)
	}
	calls0 := o.calls()
	start := time.Now()

	ph := attack(ctx, name, client, tr, l)

	wall := time.Since(start).Seconds()
	ph.Seconds = wall
	ph.UpstreamCalls = o.calls() - calls0
	for i, pid := range o.pids {
		u, err := readUsage(pid)
		if err != nil {
			return ph, fmt.Errorf("server %d gone after the attack: %w", pid, err)
		}
		ph.ServerCPUSeconds += (u.cpu - before[i].cpu).Seconds()
		ph.ServerRSS += u.rss
	}
	ph.ServerCores = ph.ServerCPUSeconds / wall
	if ok := ph.Requests - ph.Errors; ok > 0 {
		ph.ServerCPUPerReq = ph.ServerCPUSeconds / float64(ok) * 1e6
	}
	if o.redisPID != 0 {
		redis1, _ := readUsage(o.redisPID)
		ph.RedisCores = (redis1.cpu - redis0.cpu).Seconds() / wall
	}
	self1, _ := readUsage(0)
	ph.GeneratorCores = (self1.cpu - self0.cpu).Seconds() / wall
	if hist0 != nil {
		if hist1, err := tokenHistogram(ctx, o.metrics); err == nil {
			ms := func(le float64) float64 {
				if math.IsInf(le, 1) {
					return -1
				}
				return le * 1000
			}
			ph.ServerLatency = &BucketLatency{
				P50:  ms(bucketQuantile(hist0, hist1, 0.5)),
				P99:  ms(bucketQuantile(hist0, hist1, 0.99)),
				P999: ms(bucketQuantile(hist0, hist1, 0.999)),
			}
		}
	}
	if busy1, err := machineBusy(); err == nil && busy0 > 0 {
		ph.MachineCores = (busy1 - busy0).Seconds() / wall
		ph.OtherCores = max(ph.MachineCores-ph.ServerCores-ph.RedisCores-ph.GeneratorCores, 0)
	}
	return ph, ctx.Err()
}

// warmer sends first requests outside any measurement, with bounded
// concurrency, through a plain client.
type warmer struct {
	client      *http.Client
	concurrency int
}

func newWarmer(concurrency int) *warmer {
	return &warmer{
		concurrency: concurrency,
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				MaxIdleConnsPerHost: concurrency * 4,
			},
		},
	}
}

// warm requests a token for users [from, to) of s. Each user is sent to
// every url at the same moment (so replicas race for the same cold key). It
// returns the body size of a response.
func (w *warmer) warm(ctx context.Context, urls []string, s *sessions, from, to int) (int, error) {
	var (
		next     atomic.Int64
		bodySize atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	next.Store(int64(from))
	fail := func(err error) { errOnce.Do(func() { firstErr = err }) }
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range w.concurrency {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				var inner sync.WaitGroup
				for _, u := range urls {
					inner.Go(func() {
						n, err := w.get(ctx, u, s.headers[i])
						if err != nil {
							fail(err)
							cancel()
							return
						}
						bodySize.Store(int64(n))
					})
				}
				inner.Wait()
			}
		})
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return int(bodySize.Load()), firstErr
}

func (w *warmer) get(ctx context.Context, u string, h http.Header) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header = h.Clone()
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("warm-up: %s answered %d: %.200s", u, resp.StatusCode, b)
	}
	return len(b), nil
}

// scaledRate returns factor x rate as a whole number of requests per second.
func scaledRate(rate, factor float64) int { return max(int(math.Round(rate*factor)), 1) }

// vegetaTargeter is vegeta's Targeter, named where scenarios build theirs.
type vegetaTargeter = vegeta.Targeter
