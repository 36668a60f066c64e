package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// phases runs the scenario's unmeasured warm-up, its closed-loop peak
// phase and its constant-rate phase at rateFactor of that peak.
func (s *suite) phases(ctx context.Context, sc *Scenario, obs observed, tr func() vegetaTargeter) error {
	client := newLoadClient()
	defer client.CloseIdleConnections()
	if s.o.warmup > 0 {
		w := attack(ctx, sc.Name+"-warmup", client, tr(), load{closed: true, concurrency: s.o.concurrency, duration: s.o.warmup})
		if w.Errors > 0 {
			sc.Error = fmt.Sprintf("warm-up load: %d errors, e.g. %q", w.Errors, w.ErrorSample)
		}
	}
	s.logf("[%s] peak: closed loop, %d workers, %s", sc.Name, s.o.concurrency, s.o.duration)
	var err error
	if sc.Peak, err = obs.run(ctx, sc.Name+"-peak", client, tr(), load{closed: true, concurrency: s.o.concurrency, duration: s.o.duration}); err != nil {
		return err
	}
	rate := scaledRate(sc.Peak.Throughput, s.o.rateFactor)
	s.logf("[%s] peak %.0f/s, p99 %.2fms, %d errors; constant rate %d/s, %s", sc.Name, sc.Peak.Throughput, sc.Peak.Latency.P99, sc.Peak.Errors, rate, s.o.duration)
	if sc.Rate, err = obs.run(ctx, sc.Name+"-rate", client, tr(), load{rate: rate, concurrency: s.o.concurrency, duration: s.o.duration}); err != nil {
		return err
	}
	s.logf("[%s] at %d/s: p50 %.3fms p99 %.3fms p99.9 %.3fms, %d errors", sc.Name, rate, sc.Rate.Latency.P50, sc.Rate.Latency.P99, sc.Rate.Latency.P999, sc.Rate.Errors)
	return nil
}

// brokerMetrics are the series kept from each broker's /metrics.
var brokerMetrics = []string{
	"qlik_token_broker_cache_lookups_total",
	"qlik_token_broker_token_leases_total",
	"qlik_token_broker_token_coalesced_requests_total",
	"qlik_token_broker_upstream_requests_total",
	"qlik_token_broker_redis_errors_total",
	"go_memstats_heap_inuse_bytes",
	"go_goroutines",
}

// collectMetrics sums the selected series over ps.
func collectMetrics(ctx context.Context, ps []*proc) map[string]float64 {
	sum := map[string]float64{}
	for _, p := range ps {
		m, err := scrape(ctx, p.metrics, brokerMetrics...)
		if err != nil {
			continue
		}
		for k, v := range m {
			sum[k] += v
		}
	}
	return sum
}

// hotScenarios measures the baseline, the L1 path and the Redis-only path.
// The L1 broker is warmed first: its answer sizes the baseline's body.
func (s *suite) hotScenarios(ctx context.Context) error {
	base := Scenario{Name: scBaseline, Title: "echo baseline", Processes: 1, Users: s.hot.len(),
		Description: "bare echo handler returning a fixed JSON body of the size of a token response, in its own process"}
	l1 := Scenario{Name: scL1, Title: "cached, L1 hit", Processes: 1, Users: s.hot.len(),
		Description: "broker with Redis and the default in-process L1; every user warmed first, so every request is an L1 hit"}
	rd := Scenario{Name: scRedis, Title: "cached, Redis only", Processes: 1, Users: s.hot.len(),
		Description: "broker with QTB_L1_ENABLED=false: every request is a Redis GET and an AES-GCM open"}

	if err := s.redis.flush(ctx); err != nil {
		return err
	}
	calls0 := s.fast.Calls(qliktest.EndpointToken)
	brokers, err := s.startBrokers(ctx, 1, s.fast)
	if err != nil {
		return err
	}
	s.logf("[%s] warming %d users", scL1, s.hot.len())
	body, err := s.warmer.warm(ctx, urlsOf(brokers), s.hot, 0, s.hot.len())
	if err != nil {
		stopAll(brokers)
		return err
	}
	s.r.Settings.BodyBytes = body

	// The baseline, while the warmed broker idles.
	if s.o.runs(scBaseline) {
		bl, err := startServer(ctx, "baseline", s.baseline, []string{"-listen", "127.0.0.1:0", "-body-size", strconv.Itoa(body)}, s.cleanEnv())
		if err != nil {
			stopAll(brokers)
			return err
		}
		url := []string{tokenURL(bl)}
		if err := s.phases(ctx, &base, observed{pids: []int{bl.pid()}, calls: func() int { return 0 }},
			func() vegetaTargeter { return hotTargeter(url, s.hot) }); err != nil {
			base.Error = err.Error()
		}
		bl.stop()
		s.r.Scenarios = append(s.r.Scenarios, base)
	}

	obs := observed{pids: pidsOf(brokers), redisPID: s.redis.pid(), metrics: metricsOf(brokers), calls: func() int { return s.fast.Calls(qliktest.EndpointToken) }}
	if s.o.runs(scL1) {
		s.hotPhases(ctx, &l1, brokers, obs, calls0)
	} else {
		stopAll(brokers)
	}
	if !s.o.runs(scRedis) {
		return nil
	}

	if err := s.redis.flush(ctx); err != nil {
		return err
	}
	calls0 = s.fast.Calls(qliktest.EndpointToken)
	brokers, err = s.startBrokers(ctx, 1, s.fast, "QTB_L1_ENABLED=false")
	if err != nil {
		rd.Error = err.Error()
		s.r.Scenarios = append(s.r.Scenarios, rd)
		return nil
	}
	s.logf("[%s] warming %d users", scRedis, s.hot.len())
	if _, err := s.warmer.warm(ctx, urlsOf(brokers), s.hot, 0, s.hot.len()); err != nil {
		rd.Error = err.Error()
		stopAll(brokers)
		s.r.Scenarios = append(s.r.Scenarios, rd)
		return nil
	}
	obs.pids, obs.metrics = pidsOf(brokers), metricsOf(brokers)
	s.hotPhases(ctx, &rd, brokers, obs, calls0)
	return nil
}

// hotPhases measures warmed brokers with the hot users, records the
// scenario and stops the brokers.
func (s *suite) hotPhases(ctx context.Context, sc *Scenario, brokers []*proc, obs observed, calls0 int) {
	urls := urlsOf(brokers)
	if err := s.phases(ctx, sc, obs, func() vegetaTargeter { return hotTargeter(urls, s.hot) }); err != nil {
		sc.Error = err.Error()
	}
	sc.UpstreamCalls = obs.calls() - calls0
	sc.Metrics = collectMetrics(ctx, brokers)
	stopAll(brokers)
	s.r.Scenarios = append(s.r.Scenarios, *sc)
}

// coldScenario sends every request for a new user to a broker whose tenant
// answers after -cold-latency.
func (s *suite) coldScenario(ctx context.Context) {
	sc := Scenario{Name: scCold, Title: "cold users", Processes: 1,
		Description: fmt.Sprintf("every request for a user never seen before: Redis miss, lease, tenant call (%s latency), seal, two writes", s.o.coldLatency)}
	defer func() { s.r.Scenarios = append(s.r.Scenarios, sc) }()
	if err := s.redis.flush(ctx); err != nil {
		sc.Error = err.Error()
		return
	}
	// No more users than closed-loop workers can consume at the tenant's
	// latency, plus the rate phase and a margin.
	perSec := float64(s.o.concurrency) / max(s.o.coldLatency.Seconds(), 0.005)
	n := int(perSec*(s.o.warmup.Seconds()+s.o.duration.Seconds()*(1+s.o.rateFactor))*1.1) + s.o.concurrency
	s.logf("[%s] adding %d users to the tenant", sc.Name, n)
	pool, err := s.newUsers(s.slow, n)
	if err != nil {
		sc.Error = err.Error()
		return
	}
	brokers, err := s.startBrokers(ctx, 1, s.slow)
	if err != nil {
		sc.Error = err.Error()
		return
	}
	defer stopAll(brokers)
	ct := &coldTargeter{url: tokenURL(brokers[0]), s: pool}
	calls0 := s.slow.Calls(qliktest.EndpointToken)
	obs := observed{pids: pidsOf(brokers), redisPID: s.redis.pid(), metrics: metricsOf(brokers), calls: func() int { return s.slow.Calls(qliktest.EndpointToken) }}
	if err := s.phases(ctx, &sc, obs, ct.targeter); err != nil {
		sc.Error = err.Error()
	}
	sc.Users = ct.used()
	sc.UpstreamCalls = obs.calls() - calls0
	sc.Metrics = collectMetrics(ctx, brokers)
}

// replicasScenario runs the hot users through -replicas brokers sharing one
// Redis, round robin. Each user's first request goes to every replica at
// once, so the upstream calls show the cross-replica lease at work.
func (s *suite) replicasScenario(ctx context.Context) {
	sc := Scenario{Name: scReplicas, Title: fmt.Sprintf("%d replicas, shared Redis", s.o.replicas), Processes: s.o.replicas, Users: s.hot.len(),
		Description: fmt.Sprintf("the hot users round robin over %d broker processes sharing Redis (L1 on); first requests raced on every replica", s.o.replicas)}
	if err := s.redis.flush(ctx); err != nil {
		sc.Error = err.Error()
		s.r.Scenarios = append(s.r.Scenarios, sc)
		return
	}
	calls0 := s.fast.Calls(qliktest.EndpointToken)
	brokers, err := s.startBrokers(ctx, s.o.replicas, s.fast)
	if err != nil {
		sc.Error = err.Error()
		s.r.Scenarios = append(s.r.Scenarios, sc)
		return
	}
	s.logf("[%s] warming %d users on %d replicas at once", sc.Name, s.hot.len(), len(brokers))
	if _, err := s.warmer.warm(ctx, urlsOf(brokers), s.hot, 0, s.hot.len()); err != nil {
		sc.Error = err.Error()
		stopAll(brokers)
		s.r.Scenarios = append(s.r.Scenarios, sc)
		return
	}
	obs := observed{pids: pidsOf(brokers), redisPID: s.redis.pid(), metrics: metricsOf(brokers), calls: func() int { return s.fast.Calls(qliktest.EndpointToken) }}
	s.hotPhases(ctx, &sc, brokers, obs, calls0)
}

// memory warms one broker with growing numbers of users and reads its RSS.
func (s *suite) memory(ctx context.Context) {
	m := &s.r.Memory
	if len(s.o.memUsers) == 0 {
		return
	}
	if err := s.redis.flush(ctx); err != nil {
		m.Error = err.Error()
		return
	}
	most := s.o.memUsers[len(s.o.memUsers)-1]
	s.logf("[memory] adding %d users to the tenant", most)
	pool, err := s.newUsers(s.fast, most)
	if err != nil {
		m.Error = err.Error()
		return
	}
	brokers, err := s.startBrokers(ctx, 1, s.fast)
	if err != nil {
		m.Error = err.Error()
		return
	}
	defer stopAll(brokers)
	b := brokers[0]
	read := func(users int) error {
		// Let in-flight work and the background scavenger settle a little.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
		u, err := readUsage(b.pid())
		if err != nil {
			return err
		}
		mt, _ := scrape(ctx, b.metrics, "go_memstats_heap_inuse_bytes", "qlik_token_broker_cache_lookups_total")
		m.Points = append(m.Points, MemPoint{Users: users, RSS: u.rss, HWM: u.hwm, HeapInuse: int64(mt["go_memstats_heap_inuse_bytes"])})
		s.logf("[memory] %d users: RSS %.1f MiB, heap in use %.1f MiB", users, mib(u.rss), mib(int64(mt["go_memstats_heap_inuse_bytes"])))
		return nil
	}
	if err := read(0); err != nil {
		m.Error = err.Error()
		return
	}
	cpu0, _ := readUsage(b.pid())
	var warmCPU time.Duration
	done := 0
	for _, n := range s.o.memUsers {
		s.logf("[memory] warming users %d..%d", done, n)
		if _, err := s.warmer.warm(ctx, []string{tokenURL(b)}, pool, done, n); err != nil {
			m.Error = err.Error()
			return
		}
		u, _ := readUsage(b.pid())
		warmCPU += u.cpu - cpu0.cpu
		done = n
		if err := read(n); err != nil {
			m.Error = err.Error()
			return
		}
		cpu0, _ = readUsage(b.pid())
	}
	m.ColdCPUPerReq = warmCPU.Seconds() / float64(done) * 1e6
}
