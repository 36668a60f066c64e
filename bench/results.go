package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Results is everything one run measured; it is written as results.json and
// is the only input of the report (markdown and plots).
type Results struct {
	Machine   Machine    `json:"machine"`
	Settings  Settings   `json:"settings"`
	Scenarios []Scenario `json:"scenarios"`
	Memory    Memory     `json:"memory"`
	GoBench   GoBench    `json:"go_benchmarks"`
	Goals     []Goal     `json:"goals"`
	// Started is RFC 3339; Seconds is the wall time of the whole run.
	Started string  `json:"started"`
	Seconds float64 `json:"seconds"`
}

// Machine describes where the run happened.
type Machine struct {
	NumCPU       int    `json:"nproc"`
	CPUModel     string `json:"cpu_model"`
	GoVersion    string `json:"go_version"`
	Kernel       string `json:"kernel"`
	RedisVersion string `json:"redis_version"`
}

// Settings are the knobs of the run, so a result can be reproduced.
type Settings struct {
	Command         string  `json:"command"`
	Quick           bool    `json:"quick"`
	PhaseSeconds    float64 `json:"phase_seconds"`
	WarmupSeconds   float64 `json:"warmup_seconds"`
	Concurrency     int     `json:"concurrency"`
	HotUsers        int     `json:"hot_users"`
	ColdLatencyMS   float64 `json:"cold_tenant_latency_ms"`
	Replicas        int     `json:"replicas"`
	WarmConcurrency int     `json:"warm_concurrency"`
	RateFactor      float64 `json:"rate_factor"`
	// ServerGOMAXPROCS and GeneratorGOMAXPROCS are the values in effect
	// (0 in ServerGOMAXPROCS: not set, the Go default of nproc).
	ServerGOMAXPROCS    int `json:"server_gomaxprocs"`
	GeneratorGOMAXPROCS int `json:"generator_gomaxprocs"`
	// ServerCPUs is the CPU list servers and redis-server were pinned to
	// (taskset -c); the generator had the others. Empty: not pinned.
	ServerCPUs string `json:"server_cpus,omitempty"`
	// ServerEnv is extra environment given to every server process.
	ServerEnv []string `json:"server_env,omitempty"`
	BodyBytes int      `json:"token_body_bytes"`
	Sealed    bool     `json:"redis_values_sealed"`
	// BrokerSource is a digest of the sources the broker was built from.
	BrokerSource string `json:"broker_source"`
	Note         string `json:"note,omitempty"`
}

// Scenario is one configuration under load: a closed-loop phase to find its
// peak, then a constant-rate phase at a fraction of that peak for latency.
type Scenario struct {
	Name        string `json:"name"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Processes   int    `json:"server_processes"`
	// Users is how many distinct users the scenario's requests carried.
	Users int   `json:"users"`
	Peak  Phase `json:"peak"`
	Rate  Phase `json:"rate"`
	// UpstreamCalls counts /oauth/token calls at the tenant from the start
	// of the scenario (its warm-up included) to its end.
	UpstreamCalls int `json:"upstream_calls"`
	// PeakRatio is Peak.Throughput over the baseline's.
	PeakRatio float64 `json:"peak_ratio_to_baseline"`
	// Metrics are selected broker metrics at the end (summed over processes).
	Metrics map[string]float64 `json:"broker_metrics,omitempty"`
	Error   string             `json:"error,omitempty"`
}

// Phase is one bounded attack.
type Phase struct {
	Mode        string         `json:"mode"` // "closed-loop" or "constant-rate"
	Concurrency int            `json:"concurrency,omitempty"`
	TargetRate  float64        `json:"target_rate,omitempty"`
	Seconds     float64        `json:"seconds"`
	Requests    int            `json:"requests"`
	Errors      int            `json:"errors"`
	ErrorSample []string       `json:"error_sample,omitempty"`
	Codes       map[string]int `json:"status_codes"`
	// Throughput is successful responses per second.
	Throughput float64 `json:"throughput"`
	Latency    Latency `json:"latency_ms"`
	// Server* are the broker (or baseline) processes, summed.
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	ServerCores      float64 `json:"server_cpu_cores"`
	ServerCPUPerReq  float64 `json:"server_cpu_us_per_request"`
	ServerRSS        int64   `json:"server_rss_bytes"`
	RedisCores       float64 `json:"redis_cpu_cores"`
	// GeneratorCores includes the in-process fake tenant.
	GeneratorCores float64 `json:"generator_cpu_cores"`
	// MachineCores is all CPUs' busy time over the phase (/proc/stat);
	// OtherCores what is left of it after the servers, Redis and the
	// generator: kernel work not charged to them (loopback networking
	// softirqs) and any other process — noise, when large.
	MachineCores  float64 `json:"machine_busy_cores"`
	OtherCores    float64 `json:"other_cpu_cores"`
	UpstreamCalls int     `json:"upstream_calls"`
	// ServerLatency is the brokers' own view of the same requests, from
	// their request-duration histogram; nil for the baseline.
	ServerLatency *BucketLatency `json:"server_latency_bucket_ms,omitempty"`
}

// BucketLatency holds, per quantile, the upper bound in ms of the
// histogram bucket it falls in (-1: beyond the last finite bucket), so
// "p99 0.5" means at least 99% of requests took at most 0.5 ms inside the
// broker (from routing to the response written, without the network and
// the generator).
type BucketLatency struct {
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
}

// Latency percentiles in milliseconds.
type Latency struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// Memory is broker RSS against the number of users with a cached token.
type Memory struct {
	Points []MemPoint `json:"points"`
	// ColdCPUPerReq is broker CPU per first request of a user (session
	// verification, Redis miss, lease, tenant call, sealing, two writes),
	// from the warm-up, in microseconds.
	ColdCPUPerReq float64 `json:"cold_cpu_us_per_request"`
	Error         string  `json:"error,omitempty"`
	// Run is set when the step comes from another run than the rest of
	// the report (-memory-from).
	Run *RunInfo `json:"run,omitempty"`
}

// RunInfo says which run a part of a report comes from, when it is not
// the run of the rest (-memory-from).
type RunInfo struct {
	Command      string `json:"command"`
	Started      string `json:"started"`
	BrokerSource string `json:"broker_source"`
	CPUModel     string `json:"cpu_model"`
	NumCPU       int    `json:"nproc"`
	GoVersion    string `json:"go_version"`
}

// takeMemory replaces r's memory step with the one later run m measured,
// saying where it comes from, and reports the goals again.
func takeMemory(r, m *Results) {
	r.Memory = m.Memory
	if r.Memory.Run == nil {
		r.Memory.Run = &RunInfo{Command: m.Settings.Command, Started: m.Started, BrokerSource: m.Settings.BrokerSource,
			CPUModel: m.Machine.CPUModel, NumCPU: m.Machine.NumCPU, GoVersion: m.Machine.GoVersion}
	}
	r.Goals = goals(r)
}

// MemPoint is one reading after warming Users users.
type MemPoint struct {
	Users     int   `json:"users"`
	RSS       int64 `json:"rss_bytes"`
	HWM       int64 `json:"rss_peak_bytes"`
	HeapInuse int64 `json:"heap_inuse_bytes"`
	L1Entries int   `json:"l1_entries,omitempty"`
}

// GoBench holds the testing.B results run by the suite.
type GoBench struct {
	Command string      `json:"command,omitempty"`
	Results []BenchLine `json:"results"`
	Error   string      `json:"error,omitempty"`
}

// BenchLine is one line of `go test -bench -benchmem` output.
type BenchLine struct {
	Package     string  `json:"package"`
	Name        string  `json:"name"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

// Goal is one target of the issue, reported, never enforced.
type Goal struct {
	What     string `json:"what"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

func (r *Results) scenario(name string) *Scenario {
	for i := range r.Scenarios {
		if r.Scenarios[i].Name == name {
			return &r.Scenarios[i]
		}
	}
	return nil
}

func writeResults(dir string, r *Results) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "results.json")
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
}

func readResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
