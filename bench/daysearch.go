package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The search over population size (issue 18): the largest population the
// broker carries with 0 × 429 and a p99 first-token wait under the goal,
// measured by running the first part of the compressed day (from its start
// through the morning wave and the Redis flush: the part where the quota
// binds) at increasing populations and bisecting, then the whole day at
// the limit found. Nothing here is a model but the figures it is compared
// with (modelLimits), which are labelled as such.

// searchStep is one measured population.
type searchStep struct {
	Users           int     `json:"users"`
	Pass            bool    `json:"pass"`
	Rejected429     int     `json:"rejected_429"`
	FirstWaitP50    float64 `json:"first_wait_p50_ms"`
	FirstWaitP99    float64 `json:"first_wait_p99_ms"`
	FirstTokens     int     `json:"first_tokens"`
	Requests        int64   `json:"requests"`
	Failed          int64   `json:"failed"`
	TokenCalls      int     `json:"token_calls"`
	MaxWindowPerMin float64 `json:"max_window_calls_a_minute"`
	// MaxWindowBeforeFlush is the busiest 5-minute window (a minute)
	// before the flush: the morning wave's own load.
	MaxWindowBeforeFlush   float64 `json:"max_window_before_flush"`
	Rejected429BeforeFlush int     `json:"rejected_429_before_flush"`
	BusyCores              float64 `json:"machine_busy_cores"`
	FlushHeldUsers         int     `json:"flush_held_users"`
	FlushTokenCalls        int     `json:"flush_token_calls"`
	FlushFirstTokens       int     `json:"flush_first_tokens"`
	FlushRefill            refill  `json:"flush_refill"`
	RealSeconds            float64 `json:"real_seconds"`
	MaxLagMS               int64   `json:"max_generator_lag_ms"`
	// Minutes are the step's per-minute figures, as a day's.
	Minutes  []dayMinute    `json:"minutes,omitempty"`
	FailedBy map[string]int `json:"failed_by,omitempty"`
	Error    string         `json:"error,omitempty"`
}

// limitModel is a caching pattern's carrying limit computed, not measured:
// the population whose expected token calls, averaged over Qlik's 5-minute
// window, reach the quota at the day's busiest moment.
type limitModel struct {
	Name  string `json:"name"`
	Basis string `json:"basis"`
	// PeakPerMinPer1k is the busiest 5-minute window's calls a minute per
	// 1,000 users.
	PeakPerMinPer1k float64 `json:"peak_window_calls_a_minute_per_1000_users"`
	Limit           int     `json:"limit"`
}

// DaySearch is what -day-search writes to day-search.json: the search, the
// model figures and the whole day at the limit.
type DaySearch struct {
	Command     string       `json:"command"`
	Machine     Machine      `json:"machine"`
	Started     string       `json:"started"`
	Compression float64      `json:"compression"`
	FromHour    float64      `json:"from_hour"`
	SearchFrom  float64      `json:"search_from_hour"`
	UntilHour   float64      `json:"search_until_hour"`
	ToHour      float64      `json:"to_hour"`
	Quota       int          `json:"quota_per_minute"`
	WaitGoalMS  float64      `json:"wait_goal_ms"`
	Min         int          `json:"min"`
	Max         int          `json:"max"`
	StepBudget  int          `json:"step_budget"`
	Steps       []searchStep `json:"steps"`
	// Limit is the largest population that passed (0: none did);
	// FirstFail the smallest that failed above it (0: none did).
	Limit     int          `json:"limit"`
	FirstFail int          `json:"first_fail"`
	Models    []limitModel `json:"models"`
	Day       *DayResults  `json:"day,omitempty"`
	// RealSeconds is the whole command's wall time, the broker's build
	// included (not `go run`'s own compile of bench).
	RealSeconds float64 `json:"real_seconds"`
}

// runDaySearch is `bench -day-search`.
func runDaySearch(ctx context.Context, o options, stdout, log io.Writer) error {
	if o.from != "" {
		ds, err := readDaySearch(o.from)
		if err != nil {
			return err
		}
		return publishDaySearch(o, ds, stdout, false)
	}
	started := time.Now()
	d := o.day
	s := &suite{o: o, log: log}
	cleanup, err := s.dayBuild(ctx)
	defer cleanup()
	if err != nil {
		return err
	}
	m := machine()
	ds := &DaySearch{
		Command: strings.TrimSpace("go run ./bench " + strings.Join(o.args, " ")), Machine: m, Started: started.UTC().Format(time.RFC3339),
		Compression: d.compression, FromHour: d.from, SearchFrom: d.searchFrom, UntilHour: d.searchUntil, ToHour: d.to, Quota: d.quota,
		WaitGoalMS: float64(d.waitGoal) / float64(time.Millisecond), Min: d.searchMin, Max: d.searchMax, StepBudget: d.searchSteps,
		Models: modelLimits(d),
	}
	measure := func(n int) (bool, error) {
		step := d
		step.users, step.start, step.until = n, d.searchFrom, d.searchUntil
		t := time.Now()
		res, err := s.runDayOnce(ctx, step)
		st := searchStep{Users: n, RealSeconds: time.Since(t).Seconds()}
		if res != nil {
			st.Rejected429, st.FirstWaitP50, st.FirstWaitP99, st.FirstTokens = res.Rejected429, res.FirstWaitP50, res.FirstWaitP99, res.FirstTokens
			st.Requests, st.Failed, st.TokenCalls, st.MaxWindowPerMin = res.Requests, res.Failed, res.TokenCalls, res.MaxWindowPerMin
			st.FlushHeldUsers, st.FlushTokenCalls, st.FlushFirstTokens = res.FlushHeldUsers, res.FlushTokenCalls, res.FlushFirstTokens
			st.MaxLagMS, st.FailedBy, st.Minutes, st.FlushRefill = res.MaxLagMS, res.FailedBy, res.Minutes, res.FlushRefill
			st.BusyCores = res.BusyCores
			for _, m := range res.Minutes {
				if float64(m.Minute) < d.flushAt*60 {
					st.MaxWindowBeforeFlush = max(st.MaxWindowBeforeFlush, m.WindowPerMin)
					st.Rejected429BeforeFlush += m.Rejected429
				}
			}
		}
		if err != nil {
			st.Error = err.Error()
		}
		st.Pass = err == nil && res != nil && res.Rejected429 == 0 && res.FirstWaitP99 < ds.WaitGoalMS
		ds.Steps = append(ds.Steps, st)
		s.logf("search: %d users: %d × 429, first-token wait p99 %.1f ms, %d failed: pass %v (%.0fs)",
			n, st.Rejected429, st.FirstWaitP99, st.Failed, st.Pass, st.RealSeconds)
		return st.Pass, err
	}
	start := d.searchMin
	if len(ds.Models) > 0 && ds.Models[0].Limit > 0 {
		// Start a little under the broker's model figure: the bracket
		// is then found in two steps if the model is right within 50 %.
		start = roundPop(0.9 * float64(ds.Models[0].Limit))
	}
	ds.Limit, ds.FirstFail, err = searchLimit(d.searchMin, d.searchMax, d.searchSteps, start, measure)
	if err == nil && ds.Limit > 0 {
		day := d
		day.users, day.until = ds.Limit, 0
		ds.Day, err = s.runDayOnce(ctx, day)
	}
	ds.RealSeconds = time.Since(started).Seconds()
	if ds.Day == nil && len(ds.Steps) == 0 {
		return err
	}
	return joinErr(err, publishDaySearch(o, ds, stdout, true))
}

func joinErr(a, b error) error {
	if a == nil {
		return b
	}
	if b != nil {
		return fmt.Errorf("%w; %w", a, b)
	}
	return a
}

// searchLimit finds the largest population in [lo, hi] for which measure
// passes, in at most steps measurements: from start it moves by 50 % at a
// time until the outcome flips (bracketing), then bisects (geometric
// midpoints, rounded by roundPop). It returns the largest population that
// passed and the smallest that failed above it (0 for none).
func searchLimit(lo, hi, steps, start int, measure func(n int) (bool, error)) (pass, fail int, err error) {
	n := min(max(start, lo), hi)
	for range steps {
		ok, err := measure(n)
		if err != nil {
			return pass, fail, err
		}
		if ok {
			pass = max(pass, n)
		} else if fail == 0 || n < fail {
			fail = n
		}
		switch {
		case ok && n >= hi, !ok && n <= lo:
			return pass, fail, nil // at a bound: nothing further to learn
		case pass > 0 && fail > 0:
			next := roundPop(math.Sqrt(float64(pass) * float64(fail)))
			if next <= pass || next >= fail {
				return pass, fail, nil // as fine as the rounding goes
			}
			n = next
		case ok:
			n = min(roundPop(float64(n)*1.5), hi)
		default:
			n = max(roundPop(float64(n)/1.5), lo)
		}
	}
	return pass, fail, nil
}

// roundPop rounds a population to two significant digits' worth of
// hundreds (100 below 10,000, 500 above), which is finer than a run can tell.
func roundPop(x float64) int {
	step := 100.0
	if x >= 10_000 {
		step = 500
	}
	return max(int(math.Round(x/step)*step), int(step))
}

// modelLimits are the carrying limits of the day's curve under three
// caching patterns, computed from the plan of a large population (the
// expected calls, whatever a run's timing): one call per user per token
// lifetime (this broker's design point: a user's first visit of the day
// costs a call, later visits reuse the token), a call per page view (Qlik's
// samples), and a per-process cache (@qlik/api): each of the 3 replicas,
// or each browser tab (a visit), mints its own.
func modelLimits(d dayOptions) []limitModel {
	const n0 = 200_000
	d.users = n0
	plan := planDay(d, mrand.New(mrand.NewPCG(7, 11)))
	minutes := int(math.Round((d.to - d.from) * 60))
	first, visits, views := make([]float64, minutes), make([]float64, minutes), make([]float64, minutes)
	at := func(h float64) int { return min(max(int((h-d.from)*60), 0), minutes-1) }
	for _, v := range plan {
		if v.start >= d.to {
			continue // clamped to the day's end: not a visit of this day
		}
		visits[at(v.start)]++
		if v.first {
			first[at(v.start)]++
		}
		// A page view on arrival, then one every 4 minutes on average.
		views[at(v.start)]++
		for m := at(v.start); m < at(v.end); m++ {
			views[m] += 0.25
		}
	}
	per := func(calls []float64, k float64) float64 {
		w := int(5 * time.Minute / time.Minute)
		var sum, peak float64
		for i, c := range calls {
			sum += c
			if i >= w {
				sum -= calls[i-w]
			}
			peak = max(peak, k*sum/float64(w))
		}
		return peak
	}
	var out []limitModel
	for _, m := range []struct {
		name, basis string
		calls       []float64
		k           float64
	}{
		{"this broker (one call per user per token lifetime)", "a user's first visit of the day costs one call", first, 1},
		{"a token per page view (Qlik's samples)", "one call per page view, one every 4 minutes of a visit", views, 1},
		{"a per-process cache, 3 replicas (@qlik/api on a backend)", "each replica mints its own token for a user: 3 × first visits", first, 3},
		{"a per-process cache, a browser tab per visit (@qlik/api in the browser)", "each visit's page load mints its own token", visits, 1},
	} {
		peak := per(m.calls, m.k) / n0 * 1000
		out = append(out, limitModel{Name: m.name, Basis: m.basis, PeakPerMinPer1k: peak,
			Limit: int(float64(d.quota) / peak * 1000)})
	}
	return out
}

// publishDaySearch writes day-search.json (when fresh) and the plots to
// -out, the report to stdout, and the -markdown section with its plots.
func publishDaySearch(o options, ds *DaySearch, stdout io.Writer, fresh bool) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if fresh {
		b, _ := json.MarshalIndent(ds, "", "  ")
		path := filepath.Join(o.out, "day-search.json")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", path)
	}
	if err := writeDayPlots(o.out, ds.Day, ds); err != nil {
		return err
	}
	fmt.Fprintln(stdout, renderDaySearch(ds, ""))
	if o.markdown != "" {
		img := filepath.Join(filepath.Dir(o.markdown), "img")
		if err := writeDayPlots(img, ds.Day, ds); err != nil {
			return err
		}
		section := dayBeginMarker + "\n\n" + renderDaySearch(ds, "img") + "\n" + dayEndMarker
		if err := replaceSection(o.markdown, dayBeginMarker, dayEndMarker, section); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "updated %s and %s/day-*.png\n", o.markdown, img)
	}
	return nil
}

func readDaySearch(path string) (*DaySearch, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ds DaySearch
	if err := json.Unmarshal(b, &ds); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &ds, nil
}
