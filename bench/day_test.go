package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSearchLimit checks the bisection against a known threshold: it finds
// the largest passing population to the rounding, within its step budget,
// and stops at the bounds.
func TestSearchLimit(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		lo, hi, steps, start   int
		threshold              int // populations up to it pass
		wantPass, wantFail     int
		wantMeasuredAtMost     int
		wantPassAtLeast, slack int
	}{
		{name: "start under the limit", lo: 1000, hi: 64000, steps: 8, start: 9000, threshold: 12345, wantMeasuredAtMost: 8, wantPassAtLeast: 12000, slack: 500},
		{name: "start over the limit", lo: 1000, hi: 64000, steps: 8, start: 30000, threshold: 12345, wantMeasuredAtMost: 8, wantPassAtLeast: 12000, slack: 500},
		{name: "everything passes", lo: 1000, hi: 5000, steps: 8, start: 4000, threshold: 1 << 30, wantPass: 5000},
		{name: "nothing passes", lo: 1000, hi: 5000, steps: 8, start: 2000, threshold: 10, wantFail: 1000},
		{name: "one step", lo: 1000, hi: 5000, steps: 1, start: 2000, threshold: 3000, wantPass: 2000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var measured []int
			pass, fail, err := searchLimit(tc.lo, tc.hi, tc.steps, tc.start, func(n int) (bool, error) {
				measured = append(measured, n)
				if n < tc.lo || n > tc.hi {
					t.Errorf("measured %d outside [%d, %d]", n, tc.lo, tc.hi)
				}
				return n <= tc.threshold, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(measured) > tc.steps {
				t.Errorf("%d measurements, budget %d: %v", len(measured), tc.steps, measured)
			}
			if pass > tc.threshold || (fail != 0 && fail <= tc.threshold) {
				t.Errorf("pass %d, fail %d: wrong side of the threshold %d (%v)", pass, fail, tc.threshold, measured)
			}
			if tc.wantPass != 0 && pass != tc.wantPass {
				t.Errorf("pass = %d, want %d (%v)", pass, tc.wantPass, measured)
			}
			if tc.wantFail != 0 && fail != tc.wantFail {
				t.Errorf("fail = %d, want %d (%v)", fail, tc.wantFail, measured)
			}
			if tc.wantPassAtLeast != 0 && (pass < tc.wantPassAtLeast || fail-pass > tc.slack) {
				t.Errorf("pass %d, fail %d: want pass >= %d within %d of the first failure (%v)", pass, fail, tc.wantPassAtLeast, tc.slack, measured)
			}
		})
	}
}

// TestModelLimits checks the model figures' order: a token per page view
// carries fewer users than one call per user per lifetime, and three
// replicas each minting their own carry a third of that.
func TestModelLimits(t *testing.T) {
	d := dayOptions{from: 7, to: 19, quota: 100}
	ms := modelLimits(d)
	if len(ms) != 4 {
		t.Fatalf("got %d models", len(ms))
	}
	broker, perView, perReplica, perTab := ms[0].Limit, ms[1].Limit, ms[2].Limit, ms[3].Limit
	if !(perView < broker && perTab <= broker && perTab > perReplica) {
		t.Errorf("limits out of order: broker %d, per view %d, per replica %d, per tab %d", broker, perView, perReplica, perTab)
	}
	if r := float64(broker) / float64(perReplica); r < 2.9 || r > 3.1 {
		t.Errorf("broker %d vs 3 replicas each minting %d: ratio %.2f, want 3", broker, perReplica, r)
	}
}

// TestDaySearchEndToEnd runs -day-search with a tiny population and a
// short day: it builds the broker, runs the search steps and the day on
// real processes, and writes day-search.json, the plots and the markdown
// section. It asserts what was measured and written, never how fast.
func TestDaySearchEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the broker and runs a compressed day for about 30 seconds")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: %v", err)
	}
	out := t.TempDir()
	md := filepath.Join(out, "docs", "capacity.md")
	if err := os.MkdirAll(filepath.Dir(md), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(md, []byte("# Capacity\n\nprose before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{
		"-day-search", "-day-compression", "240",
		"-day-from", "7", "-day-to", "8", "-day-search-from", "7", "-day-search-until", "7.5",
		"-day-flush", "7.25", "-day-roll", "7.75",
		"-day-search-min", "100", "-day-search-max", "200", "-day-search-steps", "2",
		"-out", out, "-markdown", md,
	}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	ds, err := readDaySearch(filepath.Join(out, "day-search.json"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ds.Steps); n < 1 || n > 2 {
		t.Errorf("%d search steps, want 1 or 2", n)
	}
	for _, s := range ds.Steps {
		if s.Requests == 0 || s.FirstTokens == 0 || s.Error != "" {
			t.Errorf("step at %d users measured nothing: %+v", s.Users, s)
		}
	}
	if ds.Limit == 0 || ds.Day == nil {
		t.Fatalf("no limit or no day: limit %d, steps %+v", ds.Limit, ds.Steps)
	}
	day := ds.Day
	if day.Users != ds.Limit || day.Requests == 0 || day.TokenCalls == 0 || len(day.Minutes) != 60 {
		t.Errorf("day at the limit: %d users, %d requests, %d token calls, %d minutes", day.Users, day.Requests, day.TokenCalls, len(day.Minutes))
	}
	// A few hundred users are far from the quota: nothing may fail.
	if day.Rejected429 != 0 || day.Failed != 0 {
		t.Errorf("day: %d × 429, %d failed (%v)", day.Rejected429, day.Failed, day.FailedBy)
	}
	if len(day.Events) != 2 || day.FlushHeldUsers == 0 {
		t.Errorf("events %q, %d users holding a token at the flush", day.Events, day.FlushHeldUsers)
	}
	for _, f := range []string{"day-calls.png", "day-waits.png", "day-search.png"} {
		for _, dir := range []string{out, filepath.Join(out, "docs", "img")} {
			if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
				t.Errorf("plot %s/%s: %v", dir, f, err)
			}
		}
	}
	page, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"prose before", dayBeginMarker, dayEndMarker, "img/day-calls.png", "Measured carrying limit", "(model)"} {
		if !bytes.Contains(page, []byte(s)) {
			t.Errorf("capacity.md lacks %q", s)
		}
	}

	// Re-rendering from the JSON replaces the section, once.
	if err := run(t.Context(), []string{"-day-search", "-from", filepath.Join(out, "day-search.json"), "-out", out, "-markdown", md}, io.Discard, &stderr); err != nil {
		t.Fatalf("re-render: %v", err)
	}
	again, _ := os.ReadFile(md)
	if strings.Count(string(again), dayBeginMarker) != 1 || !bytes.Contains(again, []byte("prose before")) {
		t.Errorf("re-rendering did not replace the section exactly once:\n%s", again)
	}
}
