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
}

// DayResults is what -day writes to day.json.
type DayResults struct {
	Users           int         `json:"users"`
	Compression     float64     `json:"compression"`
	FromHour        float64     `json:"from_hour"`
	ToHour          float64     `json:"to_hour"`
	QuotaPerMinute  int         `json:"quota_per_minute"`
	Settings        []string    `json:"broker_settings"`
	TokenLifetime   string      `json:"token_lifetime"`
	Events          []string    `json:"events"`
	Hours           []dayHour   `json:"hours"`
	Minutes         []dayMinute `json:"minutes"`
	Requests        int64       `json:"requests"`
	Failed          int64       `json:"failed"`
	TokenCalls      int         `json:"token_calls"`
	Rejected429     int         `json:"rejected_429"`
	FirstWaitP50    float64     `json:"first_wait_p50_ms"`
	FirstWaitP99    float64     `json:"first_wait_p99_ms"`
	FlushTokenCalls int         `json:"flush_token_calls"` // in the 5 simulated minutes after the flush
	FlushHeldUsers  int         `json:"flush_held_users"`  // users who had a token at the flush
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

// runDay is `bench -day`.
func runDay(ctx context.Context, o options, stdout, log io.Writer) error {
	d := o.day
	s := &suite{o: o, log: log}
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	if s.tmp, err = os.MkdirTemp("", "qtb-day-"); err != nil {
		return err
	}
	defer os.RemoveAll(s.tmp)
	s.broker = filepath.Join(s.tmp, "qlik-token-broker")
	s.logf("building the broker")
	if err := build(ctx, root, ".", s.broker); err != nil {
		return err
	}
	if s.redis, err = startRedis(ctx, s.tmp); err != nil {
		return err
	}
	defer s.redis.stop()
	tenant, err := qliktest.NewOnAddr("127.0.0.1:0", qliktest.WithTier2Quota(d.quota), qliktest.WithCompression(d.compression))
	if err != nil {
		return err
	}
	defer tenant.Close()
	s.client = qliktest.OAuthClient{ID: "bench-client", Secret: randomHex(32)}
	tenant.AddClient(s.client)
	s.hmac = []byte(randomHex(32))
	s.cacheKey = "bench:" + strings.Repeat("A", 43) + "="
	users, err := s.newUsers(tenant, d.users)
	if err != nil {
		return err
	}

	c := d.compression
	scaled := func(x time.Duration) string { return (time.Duration(float64(x) / c)).Round(time.Millisecond).String() }
	settings := []string{
		"QTB_MIN_TOKEN_TTL=1m",                                  // the floor: 10m/c would be below it
		"QTB_REFRESH_AHEAD=" + scaled(time.Hour+20*time.Minute), // keeps refresh-ahead > min TTL at c up to 80
		"QTB_TOKEN_SKEW=" + scaled(time.Minute),
		"QTB_L1_TTL=" + scaled(5*time.Minute),
	}
	res := &DayResults{Users: d.users, Compression: c, FromHour: d.from, ToHour: d.to, QuotaPerMinute: d.quota,
		Settings: settings, TokenLifetime: scaled(6 * time.Hour)}
	var replicas atomic.Pointer[[]*proc]
	brokers, err := s.startBrokers(ctx, 3, tenant, settings...)
	if err != nil {
		return err
	}
	replicas.Store(&brokers)
	defer func() { stopAll(*replicas.Load()) }()

	simMinute := time.Duration(float64(time.Minute) / c)
	minutes := int(math.Round((d.to - d.from) * 60))
	stats := make([]dayMinute, minutes)
	waits := make([][]float64, minutes)
	var waitsMu sync.Mutex
	var active atomic.Int64
	t0 := time.Now().Add(time.Second)
	simAt := func(h float64) time.Time { return t0.Add(time.Duration((h - d.from) * 60 * float64(simMinute))) }
	bucket := func(t time.Time) int { return min(max(int(t.Sub(t0)/simMinute), 0), minutes-1) }

	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	defer hc.CloseIdleConnections()
	rng := mrand.New(mrand.NewPCG(1, 2))
	plan := planDay(d, rng)
	s.logf("the day: %d users, %d visits, %.0f-%.0fh simulated at %gx (%s real); %v",
		d.users, len(plan), d.from, d.to, c, time.Duration(float64(minutes)*float64(simMinute)).Round(time.Second), settings)

	ask := func(user int) (ok bool) {
		rs := *replicas.Load()
		p := rs[mrand.IntN(len(rs))]
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tokenURL(p), nil)
		req.Header = users.headers[user]
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	var wg sync.WaitGroup
	for _, v := range plan {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(v.user), uint64(v.start*1000)))
			if !sleepUntil(ctx, simAt(v.start)) {
				return
			}
			active.Add(1)
			defer active.Add(-1)
			atomic.AddInt64(&stats[bucket(time.Now())].VisitsStarted, 1)
			for first := v.first; ctx.Err() == nil && time.Now().Before(simAt(v.end)); first = false {
				start := time.Now()
				ok := ask(v.user)
				b := bucket(start)
				atomic.AddInt64(&stats[b].Requests, 1)
				if !ok {
					atomic.AddInt64(&stats[b].Failed, 1)
				}
				if first && ok {
					waitsMu.Lock()
					waits[b] = append(waits[b], float64(time.Since(start))/float64(time.Millisecond))
					waitsMu.Unlock()
				}
				// The next page view: every 4 simulated minutes on average.
				if !sleepUntil(ctx, time.Now().Add(time.Duration(r.ExpFloat64()*4*float64(simMinute)))) {
					return
				}
			}
		})
	}

	// Per simulated minute: the tenant's counts; the events on their hour.
	events := func(m int) {
		h := d.from + float64(m)/60
		switch {
		case d.flushAt >= d.from && d.flushAt < d.to && m == int((d.flushAt-d.from)*60):
			res.FlushHeldUsers = countHeld(plan, h)
			if err := s.redis.flush(ctx); err != nil {
				s.logf("flush: %v", err)
			}
			res.Events = append(res.Events, fmt.Sprintf("%s FLUSHALL (%d users held a token)", clockOf(h), res.FlushHeldUsers))
		case d.rollAt >= d.from && d.rollAt < d.to && m == int((d.rollAt-d.from)*60):
			res.Events = append(res.Events, clockOf(h)+" rolling restart of the 3 replicas")
			go s.roll(ctx, &replicas, tenant, settings)
		}
	}
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
		}
		calls0, use0 = calls, use
	}
	tick.Stop()
	wg.Wait()
	calls, use := tenant.Calls(qliktest.EndpointToken), tenant.QuotaUse()
	stats[minutes-1].TokenCalls, stats[minutes-1].Rejected429 = calls-calls0, use.Rejected-use0.Rejected

	var all []float64
	hourWaits := map[int][]float64{}
	for m := range stats {
		stats[m].Minute = int(d.from*60) + m
		st := &stats[m]
		st.FirstTokens = len(waits[m])
		st.FirstWaitP50, st.FirstWaitP99 = quantile(waits[m], 0.5), quantile(waits[m], 0.99)
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
		hr.Rejected429 += st.Rejected429
		res.Requests += st.Requests
		res.Failed += st.Failed
		res.TokenCalls += st.TokenCalls
		res.Rejected429 += st.Rejected429
		if fm := int((d.flushAt - d.from) * 60); m >= fm && m < fm+5 {
			res.FlushTokenCalls += st.TokenCalls
			res.FlushFirstTokens += st.FirstTokens
		}
	}
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
	res.RealSeconds = time.Since(t0).Seconds()
	if err := os.MkdirAll(s.o.out, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	path := filepath.Join(s.o.out, "day.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n\n%s", path, renderDay(res))
	return ctx.Err()
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

// renderDay is the per-hour table of a day, in Markdown.
func renderDay(r *DayResults) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d users, %.0f:00-%.0f:00 simulated at %gx; quota %d token calls a simulated minute; token lifetime %s; %s\n\n",
		r.Users, r.FromHour, r.ToHour, r.Compression, r.QuotaPerMinute, r.TokenLifetime, strings.Join(r.Settings, " "))
	for _, e := range r.Events {
		fmt.Fprintf(&b, "* %s\n", e)
	}
	b.WriteString("\n| hour | active users (max) | requests | failed | token calls (max a minute) | quota a minute | 429s | first-token wait p50 / p99 (ms) |\n|---|---|---|---|---|---|---|---|\n")
	for _, h := range r.Hours {
		fmt.Fprintf(&b, "| %02d:00 | %d | %d | %d | %d (%d) | %d | %d | %.1f / %.1f |\n", h.Hour, h.MaxActiveUsers, h.Requests, h.Failed,
			h.TokenCalls, h.MaxCallsAMinute, r.QuotaPerMinute, h.Rejected429, h.FirstWaitP50, h.FirstWaitP99)
	}
	fmt.Fprintf(&b, "\nTotal: %d requests, %d failed, %d token calls, %d × 429; first-token wait p50 %.1fms, p99 %.1fms; "+
		"%d token calls in the 5 simulated minutes after the flush (%d of them first tokens of users new that day), with %d users holding tokens; %.0fs real.\n",
		r.Requests, r.Failed, r.TokenCalls, r.Rejected429, r.FirstWaitP50, r.FirstWaitP99, r.FlushTokenCalls, r.FlushFirstTokens, r.FlushHeldUsers, r.RealSeconds)
	b.WriteString("\n| pattern | kind | token calls | peak calls a minute (5-minute window) | minutes over the quota |\n|---|---|---|---|---|\n")
	for _, m := range r.Models {
		fmt.Fprintf(&b, "| %s | %s | %d | %.1f | %d |\n", m.Name, m.MeasuredOrModelled, m.TokenCalls, m.PeakWindowPerMin, m.MinutesOverQuota)
	}
	return b.String()
}
