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

// TestSuiteEndToEnd runs the whole generator with tiny settings: it builds
// the broker, starts Redis, the tenant, the baseline and every scenario's
// brokers, and writes results and plots. It asserts that the run measured
// something without errors and that the caches did their job, never how
// fast anything was.
func TestSuiteEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the broker and runs load for several seconds")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: install the Debian package redis-server (bash .ci/run does this): %v", err)
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{
		"-out", out,
		"-duration", "700ms", "-warmup", "200ms",
		"-concurrency", "4", "-warm-concurrency", "4",
		"-users", "24", "-replicas", "3",
		"-cold-latency", "5ms",
		"-mem-users", "50,100",
		"-gobench=false",
		"-markdown", filepath.Join(out, "docs", "benchmarks.md"),
	}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}

	r, err := readResults(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{scBaseline, scL1, scRedis, scCold, scReplicas}
	if len(r.Scenarios) != len(want) {
		t.Fatalf("got %d scenarios, want %v", len(r.Scenarios), want)
	}
	for i, sc := range r.Scenarios {
		if sc.Name != want[i] {
			t.Errorf("scenario %d is %q, want %q", i, sc.Name, want[i])
		}
		if sc.Error != "" {
			t.Errorf("%s: %s", sc.Name, sc.Error)
		}
		for _, p := range []Phase{sc.Peak, sc.Rate} {
			if p.Requests == 0 || p.Throughput <= 0 || p.Latency.P99 <= 0 {
				t.Errorf("%s %s: nothing measured: %+v", sc.Name, p.Mode, p)
			}
			if p.Errors != 0 {
				t.Errorf("%s %s: %d errors, e.g. %q", sc.Name, p.Mode, p.Errors, p.ErrorSample)
			}
		}
	}
	for _, name := range []string{scL1, scRedis, scReplicas} {
		if sc := r.scenario(name); sc.UpstreamCalls != r.Settings.HotUsers {
			t.Errorf("%s: %d upstream token calls for %d hot users", name, sc.UpstreamCalls, r.Settings.HotUsers)
		}
	}
	if sc := r.scenario(scCold); sc.UpstreamCalls != sc.Users || sc.Users == 0 {
		t.Errorf("cold: %d upstream calls for %d new users, want one each", sc.UpstreamCalls, sc.Users)
	}
	if got := len(r.Memory.Points); got != 3 || r.Memory.Error != "" {
		t.Errorf("memory: %d points (want idle, 50, 100), error %q", got, r.Memory.Error)
	}
	for _, p := range r.Memory.Points {
		if p.RSS <= 0 {
			t.Errorf("memory at %d users: RSS %d", p.Users, p.RSS)
		}
	}
	for _, f := range []string{"throughput.png", "latency.png", "cpu.png", "rss.png"} {
		for _, dir := range []string{out, filepath.Join(out, "docs", "img")} {
			if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
				t.Errorf("plot %s/%s: %v", dir, f, err)
			}
		}
	}
	md, err := os.ReadFile(filepath.Join(out, "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{beginMarker, endMarker, "cached, L1 hit", "img/throughput.png"} {
		if !bytes.Contains(md, []byte(s)) {
			t.Errorf("benchmarks.md lacks %q", s)
		}
	}
}

// TestMarkdownKeepsProse checks that regenerating replaces only the
// generated section.
func TestMarkdownKeepsProse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.md")
	r := &Results{Scenarios: []Scenario{{Name: scBaseline, Title: "echo baseline"}}}
	if err := writeMarkdown(path, r, "img"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	b = append([]byte("# Title\n\nintro\n\n"), bytes.TrimPrefix(b, []byte("# Benchmarks\n\n"))...)
	b = append(b, "\n## What limits it\n\nprose\n"...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r.Scenarios[0].Title = "renamed baseline"
	if err := writeMarkdown(path, r, "img"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	for _, s := range []string{"# Title\n\nintro\n", "## What limits it\n\nprose\n", "renamed baseline"} {
		if !bytes.Contains(got, []byte(s)) {
			t.Errorf("after regenerating, lacks %q:\n%s", s, got)
		}
	}
	if bytes.Count(got, []byte(beginMarker)) != 1 || bytes.Contains(got, []byte("| echo baseline")) {
		t.Errorf("generated section not replaced exactly once:\n%s", got)
	}
}

func TestParseGoBench(t *testing.T) {
	out := []byte(`goos: linux
pkg: github.com/qtb-dev/qlik-token-broker/session
BenchmarkVerify/HS256-2         	   29718	      7477 ns/op	    3280 B/op	      72 allocs/op
pkg: github.com/qtb-dev/qlik-token-broker/cache
BenchmarkSeal-2                	  327363	       956.2 ns/op	 732.09 MB/s	     856 B/op	       3 allocs/op
PASS
`)
	got := parseGoBench(out)
	want := []BenchLine{
		{Package: "github.com/qtb-dev/qlik-token-broker/session", Name: "BenchmarkVerify/HS256", NsPerOp: 7477, BytesPerOp: 3280, AllocsPerOp: 72},
		{Package: "github.com/qtb-dev/qlik-token-broker/cache", Name: "BenchmarkSeal", NsPerOp: 956.2, BytesPerOp: 856, AllocsPerOp: 3},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestMemoryFrom: -memory-from renders a later run's memory step in place
// of the earlier one's, says which run it is, and judges the goal on it.
func TestMemoryFrom(t *testing.T) {
	r := &Results{Memory: Memory{Points: []MemPoint{{Users: 0, RSS: 20 << 20}, {Users: 10_000, RSS: 70 << 20}}}}
	r.Goals = goals(r)
	m := &Results{Settings: Settings{Command: "go run ./bench -only memory", BrokerSource: "sha256:new"}, Started: "2026-12-03T17:00:00Z",
		Memory: Memory{Points: []MemPoint{{Users: 0, RSS: 20 << 20}, {Users: 10_000, RSS: 50 << 20}}}}
	takeMemory(r, m)
	if len(r.Goals) != 1 || !r.Goals[0].Met || r.Goals[0].Measured != "50.0 MiB" {
		t.Fatalf("goals after taking the later memory step: %+v", r.Goals)
	}
	out := renderTables(r, "")
	for _, s := range []string{"| 10000 | 50.0 |", "`go run ./bench -only memory`, started 2026-12-03T17:00:00Z, broker built from sha256:new"} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	if _, err := parseFlags([]string{"-memory-from", "x.json"}, io.Discard); err == nil {
		t.Error("-memory-from without -from was accepted")
	}
}
