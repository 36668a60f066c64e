package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// The compressed day (issue 18): three broker processes on one Redis in
// front of a fake tenant that enforces Qlik's Tier-2 quota, driven by a
// user population that follows a working day, with time compressed by one
// factor c for everything that has a duration: the tenant's token lifetime
// and quota window (qliktest.WithCompression), the broker's settings
// (QTB_REFRESH_AHEAD, QTB_TOKEN_SKEW, QTB_L1_TTL) and the users' sessions
// and page views. QTB_MIN_TOKEN_TTL cannot go below its floor of 1m, which
// is the one setting not scaled: docs/capacity.md says what that changes.
// On the way: a Redis FLUSHALL at the morning peak and a rolling restart
// of the replicas in the afternoon.

// dayOptions are the -day flags.
type dayOptions struct {
	users       int
	compression float64
	from, to    float64 // simulated hours of the day
	quota       int     // Tier-2 calls per simulated minute
	flushAt     float64 // simulated hour; outside [from, to): none
	rollAt      float64
	// until ends the run early, at this simulated hour (0: to). The plan
	// (who visits when) is still the whole day's, so a run until h is the
	// first part of the day, not a day squeezed into [from, h).
	until float64
	// start begins the run later than from (0: from), with the same plan.
	start float64
	// The -day-search flags (daysearch.go).
	search                            bool
	searchMin, searchMax, searchSteps int
	searchFrom, searchUntil           float64
	waitGoal                          time.Duration
}

// begin is the simulated hour the run starts: d.start when it falls
// inside the day (visits that began before it are left out: those users
// are away, holding a token or not), else d.from.
func (d dayOptions) begin() float64 {
	if d.start > d.from && d.start < d.end() {
		return d.start
	}
	return d.from
}

// end is the simulated hour the run stops.
func (d dayOptions) end() float64 {
	if d.until > d.from && d.until < d.to {
		return d.until
	}
	return d.to
}

// dayMinute is what one simulated minute saw.
type dayMinute struct {
	Minute        int     `json:"minute"` // since midnight, simulated
	Requests      int64   `json:"requests"`
	Failed        int64   `json:"failed"`
	FirstTokens   int     `json:"first_tokens"`
	FirstWaitP50  float64 `json:"first_wait_p50_ms"`
	FirstWaitP99  float64 `json:"first_wait_p99_ms"`
	TokenCalls    int     `json:"token_calls"`
	Rejected429   int     `json:"rejected_429"`
	ActiveUsers   int64   `json:"active_users"`
	VisitsStarted int64   `json:"visits_started"`
	// WindowPerMin is the token calls of the 5 simulated minutes ending
	// with this one, a minute: what Qlik's window holds against the quota.
	WindowPerMin float64 `json:"window_calls_a_minute"`
	// Refreshes are the brokers' background refresh runs by result
	// (qlik_token_broker_token_refreshes_total); "error" counts the
	// deferred ones too (requests came first), and "deferred" counts them
	// alone where the broker has token_refresh_deferrals_total.
	Refreshes map[string]int `json:"refreshes,omitempty"`
	// MaxLagMS is how late (real ms) the generator sent the minute's
	// latest page view: large when the machine cannot keep up.
	MaxLagMS int64 `json:"max_generator_lag_ms"`
}

// lagMax raises *m to d in milliseconds.
func lagMax(m *int64, d time.Duration) {
	ms := d.Milliseconds()
	for {
		cur := atomic.LoadInt64(m)
		if ms <= cur || atomic.CompareAndSwapInt64(m, cur, ms) {
			return
		}
	}
}

// dayModel is a caching pattern's token calls computed from the day.
type dayModel struct {
	Name               string  `json:"name"`
	TokenCalls         int64   `json:"token_calls"`
	PeakWindowPerMin   float64 `json:"peak_window_calls_a_minute"`
	MinutesOverQuota   int     `json:"minutes_over_quota"`
	MeasuredOrModelled string  `json:"kind"`
}

// windowPeak is the peak over sliding QuotaWindow windows of calls a
// minute, and how many minutes end a window over quota a minute.
func windowPeak(perMinute []int64, quota int) (peak float64, over int) {
	const w = int(qliktest.QuotaWindow / time.Minute)
	var sum int64
	for i, c := range perMinute {
		sum += c
		if i >= w {
			sum -= perMinute[i-w]
		}
		peak = max(peak, float64(sum)/float64(w))
		if sum > int64(quota*w) {
			over++
		}
	}
	return peak, over
}

// dayHour sums a simulated hour.
type dayHour struct {
	Hour            int     `json:"hour"`
	MaxActiveUsers  int64   `json:"max_active_users"`
	Requests        int64   `json:"requests"`
	Failed          int64   `json:"failed"`
	TokenCalls      int     `json:"token_calls"`
	MaxCallsAMinute int     `json:"max_token_calls_a_minute"`
	Rejected429     int     `json:"rejected_429"`
	FirstTokens     int     `json:"first_tokens"`
	FirstWaitP50    float64 `json:"first_wait_p50_ms"`
	FirstWaitP99    float64 `json:"first_wait_p99_ms"`
	MaxWindowPerMin float64 `json:"max_window_calls_a_minute"`
	Refreshed       int     `json:"refreshed"`
	RefreshErrors   int     `json:"refresh_errors_or_deferred"`
	RefreshDeferred int     `json:"refresh_deferred"`
}

// DayResults is what -day writes to day.json.
type DayResults struct {
	Users           int            `json:"users"`
	Compression     float64        `json:"compression"`
	FromHour        float64        `json:"from_hour"`
	ToHour          float64        `json:"to_hour"`
	UntilHour       float64        `json:"until_hour"` // where the run stopped: ToHour unless cut short
	DayVisits       int            `json:"day_visits"`
	QuotaPerMinute  int            `json:"quota_per_minute"`
	Settings        []string       `json:"broker_settings"`
	TokenLifetime   string         `json:"token_lifetime"`
	Events          []string       `json:"events"`
	Hours           []dayHour      `json:"hours"`
	Minutes         []dayMinute    `json:"minutes"`
	Requests        int64          `json:"requests"`
	Failed          int64          `json:"failed"`
	TokenCalls      int            `json:"token_calls"`
	Rejected429     int            `json:"rejected_429"`
	FirstWaitP50    float64        `json:"first_wait_p50_ms"`
	FirstWaitP99    float64        `json:"first_wait_p99_ms"`
	FirstTokens     int            `json:"first_tokens"`
	MaxWindowPerMin float64        `json:"max_window_calls_a_minute"`
	Refreshes       map[string]int `json:"refreshes"`
	// FailedBy counts failed requests by answer ("503 upstream_unavailable",
	// "no answer").
	FailedBy        map[string]int `json:"failed_by,omitempty"`
	MaxLagMS        int64          `json:"max_generator_lag_ms"`
	FlushTokenCalls int            `json:"flush_token_calls"` // in the 5 simulated minutes after the flush
	FlushHeldUsers  int            `json:"flush_held_users"`  // users who had a token at the flush
	FlushKeysBefore int64          `json:"flush_keys_before"` // Redis keys just before the flush
	FlushRefill     refill         `json:"flush_refill"`
	// RollDone is the simulated time the rolling restart ended.
	RollDone string `json:"roll_done,omitempty"`
	// BusyCores is the machine's CPU use during the run (all processes,
	// ours and others'), in cores: near nproc, the machine was saturated.
	BusyCores float64 `json:"machine_busy_cores"`
	NumCPU    int     `json:"nproc"`
	// FlushFirstTokens are the first tokens of users new that day in the
	// same 5 minutes: the calls the flush did not cause.
	FlushFirstTokens int `json:"flush_first_tokens"`
	// Models: the same day's traffic under other caching, as peak token
	// calls a minute averaged over Qlik's 5-minute window, and the minutes
	// in which that average is over the quota (each a run of 429s).
	Models      []dayModel `json:"models"`
	RealSeconds float64    `json:"real_seconds"`
}

// daySession is one visit of one user: page views from start to end.
type daySession struct {
	user       int
	start, end float64 // simulated hours
	first      bool    // the user's first visit of the day: no token yet
}

// planDay draws each user's visits: a morning wave around 9:00, an
// afternoon plateau from 13:30 to 16:30 and a low background over the day,
// which leaves a lunch dip; half the morning users come back after lunch.
func planDay(o dayOptions, rng *mrand.Rand) []daySession {
	var out []daySession
	clamp := func(h float64) float64 { return min(max(h, o.from), o.to) }
	length := func() float64 { return max(rng.ExpFloat64()*1.5, 10.0/60) } // hours, mean 1.5h
	for u := range o.users {
		var start float64
		morning := false
		switch p := rng.Float64(); {
		case p < 0.45:
			start, morning = 9+rng.NormFloat64()*0.75, true
		case p < 0.8:
			start = 13.5 + 3*rng.Float64()
		default:
			start = o.from + (o.to-o.from)*rng.Float64()
		}
		start = clamp(start)
		end := clamp(start + length())
		out = append(out, daySession{user: u, start: start, end: end, first: true})
		if morning && rng.Float64() < 0.5 {
			s2 := clamp(13.5 + 3*rng.Float64())
			if s2 > end {
				out = append(out, daySession{user: u, start: s2, end: clamp(s2 + length())})
			}
		}
	}
	return out
}

// runDay is `bench -day`: one day, written to day.json.
func runDay(ctx context.Context, o options, stdout, log io.Writer) error {
	started := time.Now()
	s := &suite{o: o, log: log}
	cleanup, err := s.dayBuild(ctx)
	defer cleanup()
	if err != nil {
		return err
	}
	res, err := s.runDayOnce(ctx, o.day)
	if res == nil {
		return err
	}
	res.RealSeconds = time.Since(started).Seconds()
	if err := os.MkdirAll(s.o.out, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	path := filepath.Join(s.o.out, "day.json")
	if werr := os.WriteFile(path, b, 0o644); werr != nil {
		return werr
	}
	if perr := writeDayPlots(s.o.out, res, nil); perr != nil {
		return perr
	}
	fmt.Fprintf(stdout, "wrote %s and plots\n\n%s", path, renderDay(res))
	return err
}

// dayBuild builds the broker and draws the secrets every run of a day
// shares; cleanup removes the build directory.
func (s *suite) dayBuild(ctx context.Context) (cleanup func(), err error) {
	cleanup = func() {}
	root, err := moduleRoot(ctx)
	if err != nil {
		return cleanup, err
	}
	if s.tmp, err = os.MkdirTemp("", "qtb-day-"); err != nil {
		return cleanup, err
	}
	cleanup = func() { os.RemoveAll(s.tmp) }
	s.broker = filepath.Join(s.tmp, "qlik-token-broker")
	s.logf("building the broker")
	if err := build(ctx, root, ".", s.broker); err != nil {
		return cleanup, err
	}
	s.client = qliktest.OAuthClient{ID: "bench-client", Secret: randomHex(32)}
	s.hmac = []byte(randomHex(32))
	s.cacheKey = "bench:" + strings.Repeat("A", 43) + "="
	return cleanup, nil
}

// daySettings are the broker settings of a day compressed by c: every
// duration divided by c, except where a setting's floor forbids it.
func daySettings(c float64) []string {
	scaled := func(x time.Duration) time.Duration { return time.Duration(float64(x) / c).Round(time.Millisecond) }
	// QTB_MIN_TOKEN_TTL cannot go below 1m and QTB_REFRESH_AHEAD must
	// exceed it: 1h20m/c up to c = 80 (so it still exceeds the floor),
	// 70s beyond (the token lifetime, 6h/c, must exceed that: c < 300).
	ahead := scaled(time.Hour + 20*time.Minute)
	if ahead <= time.Minute+time.Second {
		ahead = 70 * time.Second
	}
	return []string{
		"QTB_MIN_TOKEN_TTL=1m", // the floor: 10m/c would be below it
		"QTB_REFRESH_AHEAD=" + ahead.String(),
		"QTB_TOKEN_SKEW=" + scaled(time.Minute).String(),
		"QTB_L1_TTL=" + scaled(5*time.Minute).String(),
	}
}

// runDayOnce runs one day (or its first part, until d.until) on a fresh
// Redis, tenant and three brokers, all stopped when it returns. It returns
// what it measured, with an error when the run was cut short.
func (s *suite) runDayOnce(ctx context.Context, d dayOptions) (*DayResults, error) {
	started := time.Now()
	busy0, _ := machineBusy()
	var err error
	if s.redis, err = startRedis(ctx, s.tmp); err != nil {
		return nil, err
	}
	defer s.redis.stop()
	tenant, err := qliktest.NewOnAddr("127.0.0.1:0", qliktest.WithTier2Quota(d.quota), qliktest.WithCompression(d.compression))
	if err != nil {
		return nil, err
	}
	defer tenant.Close()
	tenant.AddClient(s.client)
	users, err := s.newUsers(tenant, d.users)
	if err != nil {
		return nil, err
	}

	c, from := d.compression, d.begin()
	settings := daySettings(c)
	res := &DayResults{Users: d.users, Compression: c, FromHour: from, ToHour: d.to, UntilHour: d.end(), QuotaPerMinute: d.quota,
		Settings: settings, TokenLifetime: (time.Duration(float64(6*time.Hour)/c) / time.Second * time.Second).String()}
	var replicas atomic.Pointer[[]*proc]
	brokers, err := s.startBrokers(ctx, 3, tenant, settings...)
	if err != nil {
		return nil, err
	}
	replicas.Store(&brokers)
	var rollWG sync.WaitGroup
	defer func() { rollWG.Wait(); stopAll(*replicas.Load()) }()

	simMinute := time.Duration(float64(time.Minute) / c)
	minutes := int(math.Round((d.end() - from) * 60))
	stats := make([]dayMinute, minutes)
	waits := make([][]float64, minutes)
	var waitsMu sync.Mutex
	var active atomic.Int64
	t0 := time.Now().Add(time.Second)
	simAt := func(h float64) time.Time { return t0.Add(time.Duration((h - from) * 60 * float64(simMinute))) }
	bucket := func(t time.Time) int { return min(max(int(t.Sub(t0)/simMinute), 0), minutes-1) }

	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	defer hc.CloseIdleConnections()
	plan := planDay(d, mrand.New(mrand.NewPCG(1, 2)))
	res.DayVisits = len(plan)
	s.logf("the day: %d users, %d visits, %s-%s simulated at %gx (%s real); %v",
		d.users, len(plan), clockOf(from), clockOf(d.end()), c, time.Duration(float64(minutes)*float64(simMinute)).Round(time.Second), settings)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	failedBy := map[string]int{}
	var failedMu sync.Mutex
	// ask sends one page view's token request; why names a failure.
	ask := func(user int) (why string) {
		rs := *replicas.Load()
		p := rs[mrand.IntN(len(rs))]
		req, _ := http.NewRequestWithContext(runCtx, http.MethodGet, tokenURL(p), nil)
		req.Header = users.headers[user]
		resp, err := hc.Do(req)
		if err != nil {
			return "no answer"
		}
		var e struct {
			Error string `json:"error"` // the broker's error code
		}
		if resp.StatusCode != http.StatusOK {
			_ = json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&e)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return strings.TrimSpace(fmt.Sprintf("%d %s", resp.StatusCode, e.Error))
		}
		return ""
	}
	end := simAt(d.end())
	var wg sync.WaitGroup
	for _, v := range plan {
		if v.start >= d.end() || v.start < from {
			continue
		}
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(v.user), uint64(v.start*1000)))
			if !sleepUntil(runCtx, simAt(v.start)) {
				return
			}
			active.Add(1)
			defer active.Add(-1)
			atomic.AddInt64(&stats[bucket(time.Now())].VisitsStarted, 1)
			until := simAt(v.end)
			if until.After(end) {
				until = end
			}
			for first := v.first; runCtx.Err() == nil && time.Now().Before(until); first = false {
				start := time.Now()
				why := ask(v.user)
				if runCtx.Err() != nil {
					return // the run was stopped: not the broker's failure
				}
				ok := why == ""
				b := bucket(start)
				atomic.AddInt64(&stats[b].Requests, 1)
				if !ok {
					atomic.AddInt64(&stats[b].Failed, 1)
					failedMu.Lock()
					failedBy[why]++
					failedMu.Unlock()
				}
				if first && ok {
					waitsMu.Lock()
					waits[b] = append(waits[b], float64(time.Since(start))/float64(time.Millisecond))
					waitsMu.Unlock()
				}
				// The next page view: every 4 simulated minutes on average.
				next := time.Now().Add(time.Duration(r.ExpFloat64() * 4 * float64(simMinute)))
				if !sleepUntil(runCtx, next) {
					return
				}
				lagMax(&stats[bucket(next)].MaxLagMS, time.Since(next))
			}
		})
	}

	// Per simulated minute: the tenant's counts, the brokers' refreshes;
	// the events on their hour.
	events := func(m int) {
		h := from + float64(m)/60
		switch {
		case d.flushAt >= from && d.flushAt < d.end() && m == int((d.flushAt-from)*60):
			res.FlushHeldUsers = countHeld(plan, h)
			before, _ := s.redis.client.DBSize(ctx).Result()
			if err := s.redis.flush(ctx); err != nil {
				s.logf("flush: %v", err)
			}
			res.FlushKeysBefore = before
			rollWG.Go(func() { res.FlushRefill = watchRefill(runCtx, s.redis, before, c) })
			res.Events = append(res.Events, fmt.Sprintf("%s FLUSHALL (%d users held a token)", clockOf(h), res.FlushHeldUsers))
		case d.rollAt >= from && d.rollAt < d.end() && m == int((d.rollAt-from)*60):
			res.Events = append(res.Events, clockOf(h)+" rolling restart of the 3 replicas")
			rollWG.Go(func() {
				s.roll(runCtx, &replicas, tenant, settings)
				res.RollDone = clockOf(from + float64(time.Since(t0))/float64(simMinute)/60)
			})
		}
	}
	refreshes := newRefreshCounter()
	calls0, use0 := tenant.Calls(qliktest.EndpointToken), tenant.QuotaUse()
	tick := time.NewTicker(simMinute)
	for m := 0; m < minutes && ctx.Err() == nil; m++ {
		if m == 0 {
			sleepUntil(ctx, t0)
		} else {
			<-tick.C
		}
		events(m)
		stats[m].ActiveUsers = active.Load()
		calls, use := tenant.Calls(qliktest.EndpointToken), tenant.QuotaUse()
		if m > 0 {
			stats[m-1].TokenCalls, stats[m-1].Rejected429 = calls-calls0, use.Rejected-use0.Rejected
			stats[m-1].Refreshes = refreshes.delta(ctx, *replicas.Load())
		}
		calls0, use0 = calls, use
	}
	tick.Stop()
	sleepUntil(ctx, end)
	stop()
	wg.Wait()
	rollWG.Wait() // the roll and the refill watch write into res
	calls, use := tenant.Calls(qliktest.EndpointToken), tenant.QuotaUse()
	stats[minutes-1].TokenCalls, stats[minutes-1].Rejected429 = calls-calls0, use.Rejected-use0.Rejected
	stats[minutes-1].Refreshes = refreshes.delta(ctx, *replicas.Load())
	summarizeDay(res, d, stats, waits)
	res.FailedBy = failedBy
	res.RealSeconds = time.Since(started).Seconds()
	res.NumCPU = runtime.NumCPU()
	if busy1, err := machineBusy(); err == nil && busy0 > 0 {
		res.BusyCores = float64(busy1-busy0) / float64(time.Since(started))
	}
	return res, ctx.Err()
}

// summarizeDay fills res from the per-minute stats and first-token waits.
func summarizeDay(res *DayResults, d dayOptions, stats []dayMinute, waits [][]float64) {
	var all []float64
	hourWaits := map[int][]float64{}
	res.Refreshes = map[string]int{}
	for m := range stats {
		stats[m].Minute = int(math.Round(d.begin()*60)) + m
		st := &stats[m]
		st.FirstTokens = len(waits[m])
		st.FirstWaitP50, st.FirstWaitP99 = quantile(waits[m], 0.5), quantile(waits[m], 0.99)
		w := int(qliktest.QuotaWindow / time.Minute)
		var sum int
		for i := max(m-w+1, 0); i <= m; i++ {
			sum += stats[i].TokenCalls
		}
		st.WindowPerMin = float64(sum) / float64(w)
		all = append(all, waits[m]...)
		h := stats[m].Minute / 60
		hourWaits[h] = append(hourWaits[h], waits[m]...)
		if len(res.Hours) == 0 || res.Hours[len(res.Hours)-1].Hour != h {
			res.Hours = append(res.Hours, dayHour{Hour: h})
		}
		hr := &res.Hours[len(res.Hours)-1]
		hr.MaxActiveUsers = max(hr.MaxActiveUsers, st.ActiveUsers)
		hr.Requests += st.Requests
		hr.Failed += st.Failed
		hr.TokenCalls += st.TokenCalls
		hr.MaxCallsAMinute = max(hr.MaxCallsAMinute, st.TokenCalls)
		hr.MaxWindowPerMin = max(hr.MaxWindowPerMin, st.WindowPerMin)
		hr.Rejected429 += st.Rejected429
		hr.Refreshed += st.Refreshes["refreshed"]
		hr.RefreshErrors += st.Refreshes["error"]
		hr.RefreshDeferred += st.Refreshes["deferred"]
		for k, v := range st.Refreshes {
			res.Refreshes[k] += v
		}
		res.Requests += st.Requests
		res.Failed += st.Failed
		res.TokenCalls += st.TokenCalls
		res.Rejected429 += st.Rejected429
		res.MaxWindowPerMin = max(res.MaxWindowPerMin, st.WindowPerMin)
		res.MaxLagMS = max(res.MaxLagMS, st.MaxLagMS)
		if fm := int((d.flushAt - d.begin()) * 60); d.flushAt >= d.begin() && m >= fm && m < fm+5 {
			res.FlushTokenCalls += st.TokenCalls
			res.FlushFirstTokens += st.FirstTokens
		}
	}
	res.FirstTokens = len(all)
	res.FirstWaitP50, res.FirstWaitP99 = quantile(all, 0.5), quantile(all, 0.99)
	for i := range res.Hours {
		w := hourWaits[res.Hours[i].Hour]
		res.Hours[i].FirstTokens = len(w)
		res.Hours[i].FirstWaitP50, res.Hours[i].FirstWaitP99 = quantile(w, 0.5), quantile(w, 0.99)
	}
	res.Minutes = stats
	var measured, perView, perVisit []int64
	for _, m := range stats {
		measured = append(measured, int64(m.TokenCalls))
		perView = append(perView, m.Requests)
		perVisit = append(perVisit, m.VisitsStarted)
	}
	res.Models = nil
	for _, md := range []struct {
		name, kind string
		calls      []int64
	}{
		{"this broker (3 replicas, shared Redis)", "measured", measured},
		{"a token per page view (Qlik's samples)", "model: one call per request of the day", perView},
		{"a per-process cache (@qlik/api: a token per page load, kept for the visit)", "model: one call per visit of the day", perVisit},
	} {
		peak, over := windowPeak(md.calls, d.quota)
		var total int64
		for _, c := range md.calls {
			total += c
		}
		res.Models = append(res.Models, dayModel{Name: md.name, TokenCalls: total, PeakWindowPerMin: peak, MinutesOverQuota: over, MeasuredOrModelled: md.kind})
	}
}

// refreshCounter turns the brokers' refresh counters into per-minute
// deltas, per process, so a replica that joins (the roll) starts from 0.
type refreshCounter struct{ last map[*proc]map[string]float64 }

func newRefreshCounter() *refreshCounter {
	return &refreshCounter{last: map[*proc]map[string]float64{}}
}

// Refresh runs by result, and (brokers that count them) the deferred
// ones, which refreshes_total also counts as "error".
const (
	refreshSeries  = "qlik_token_broker_token_refreshes_total"
	deferralSeries = "qlik_token_broker_token_refresh_deferrals_total"
)

func (rc *refreshCounter) delta(ctx context.Context, ps []*proc) map[string]int {
	var out map[string]int
	for _, p := range ps {
		m, err := scrape(ctx, p.metrics, refreshSeries, deferralSeries)
		if err != nil {
			continue
		}
		prev := rc.last[p]
		cur := map[string]float64{}
		for series, v := range m {
			r := label(series, "result")
			if strings.HasPrefix(series, deferralSeries) {
				r = "deferred"
			}
			cur[r] += v
			if d := int(v - prev[r]); d > 0 {
				if out == nil {
					out = map[string]int{}
				}
				out[r] += d
			}
		}
		rc.last[p] = cur
	}
	return out
}

// refill is how fast Redis filled again after the flush: the replicas
// putting back the tokens they hold (broker/recheck.go).
type refill struct {
	// Ms50 and Ms90 are the real milliseconds after the flush when Redis
	// held half and 90 % of the keys it held before (-1: not within 20 s).
	Ms50  int64  `json:"ms_to_50_percent"`
	Ms90  int64  `json:"ms_to_90_percent"`
	Sim90 string `json:"simulated_90,omitempty"`
}

// watchRefill samples DBSIZE every 10 ms after a flush of before keys.
func watchRefill(ctx context.Context, r *redisServer, before int64, c float64) refill {
	out := refill{Ms50: -1, Ms90: -1}
	start := time.Now()
	for time.Since(start) < 20*time.Second && ctx.Err() == nil {
		n, err := r.client.DBSize(ctx).Result()
		ms := time.Since(start).Milliseconds()
		if err == nil && out.Ms50 < 0 && n*2 >= before {
			out.Ms50 = ms
		}
		if err == nil && n*10 >= before*9 {
			out.Ms90 = ms
			out.Sim90 = time.Duration(float64(time.Since(start)) * c).Round(time.Second).String()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return out
}

// roll replaces the replicas one at a time: a new one starts, joins, and
// the oldest leaves the balancer, then stops once its requests are done.
func (s *suite) roll(ctx context.Context, replicas *atomic.Pointer[[]*proc], tenant *qliktest.Tenant, settings []string) {
	for range 3 {
		fresh, err := s.startBrokers(ctx, 1, tenant, settings...)
		if err != nil {
			s.logf("roll: %v", err)
			return
		}
		cur := *replicas.Load()
		next := append(slices.Clone(cur[1:]), fresh[0])
		replicas.Store(&next)
		time.Sleep(time.Second) // in-flight requests to the old one finish
		cur[0].stop()
	}
}

// countHeld counts the users who had started a visit by hour h: they hold
// a token, in L1 at least.
func countHeld(plan []daySession, h float64) int {
	seen := map[int]bool{}
	for _, v := range plan {
		if v.start <= h {
			seen[v.user] = true
		}
	}
	return len(seen)
}

func clockOf(h float64) string {
	return fmt.Sprintf("%02d:%02d", int(h), int(math.Round((h-math.Floor(h))*60))%60)
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}
