package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. It
// is 100 on every Linux architecture Go supports (sysconf would need cgo).
const clockTicks = 100

// moduleRoot returns the directory holding this repository's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, goTool(), "env", "GOMOD")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w: %s", err, stderr.String())
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the qlik-token-broker module")
	}
	return filepath.Dir(mod), nil
}

// goTool is the go command: from PATH, else from the toolchain that built us.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// build compiles pkg (relative to root) into dst.
func build(ctx context.Context, root, pkg, dst string) error {
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", dst, pkg)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build -o %s %s: %w\n%s", dst, pkg, err, out.String())
	}
	return nil
}

// proc is a server process we started: a broker or the baseline.
type proc struct {
	name    string
	cmd     *exec.Cmd
	api     string // host:port of the API listener
	metrics string // host:port of the metrics listener; "" for the baseline
	log     *tail
	exited  chan struct{}
}

// startServer runs bin with args and env and waits for its JSON
// `"msg":"listening"` line on stderr, which names the bound addresses.
func startServer(ctx context.Context, name, bin string, args, env []string) (*proc, error) {
	cmd := command(bin, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the generator
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, log: newTail(64), exited: make(chan struct{})}
	cmd.Stdout = p.log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	type addrs struct{ api, metrics string }
	up := make(chan addrs, 1)
	go func() {
		// Keep reading until exit: a full pipe would block the server.
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Bytes()
			p.log.Write(line)
			p.log.Write([]byte{'\n'})
			if found || !bytes.Contains(line, []byte(`"listening"`)) {
				continue
			}
			var l struct {
				Msg     string `json:"msg"`
				API     string `json:"api"`
				Metrics string `json:"metrics"`
			}
			if json.Unmarshal(line, &l) == nil && l.Msg == "listening" && l.API != "" {
				found = true
				up <- addrs{l.API, l.Metrics}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		close(p.exited)
	}()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	select {
	case a := <-up:
		p.api, p.metrics = a.api, a.metrics
		if err := loopbackOnly(p.api); err != nil {
			p.stop()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s exited before listening: %v\n%s", name, cmd.ProcessState, p.log)
	case <-timer.C:
		p.stop()
		return nil, fmt.Errorf("%s did not log \"listening\" within 20s\n%s", name, p.log)
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// loopbackOnly refuses to aim load anywhere but this machine.
func loopbackOnly(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to load %s: not a loopback address", hostport)
	}
	return nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM, waits up to 10s for a graceful exit, then kills.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// usage is a process's cumulative CPU time and its memory now.
type usage struct {
	cpu      time.Duration // utime + stime
	rss, hwm int64         // VmRSS, VmHWM in bytes
}

// readUsage reads /proc/<pid>/stat and /proc/<pid>/status; pid 0 is us.
func readUsage(pid int) (usage, error) {
	dir := "/proc/self"
	if pid != 0 {
		dir = "/proc/" + strconv.Itoa(pid)
	}
	var u usage
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return u, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted from the last ')'. After it, field 3 (state) is index 0,
	// so utime (14) and stime (15) are 11 and 12.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return u, fmt.Errorf("%s/stat: short", dir)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("%s/stat: %w", dir, err)
	}
	u.cpu = time.Duration(ut+st) * time.Second / clockTicks
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return u, err
	}
	for line := range strings.Lines(string(status)) {
		name, val, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return u, fmt.Errorf("%s/status %s: %w", dir, name, err)
		}
		if name == "VmRSS" {
			u.rss = kb << 10
		} else {
			u.hwm = kb << 10
		}
	}
	return u, nil
}

// machineBusy returns the CPU time all CPUs spent not idle, from the first
// line of /proc/stat (user, nice, system, irq, softirq, steal).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: unexpected first line")
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}

// redisServer is a redis-server process on a free loopback port, without
// persistence.
type redisServer struct {
	addr    string
	version string
	cmd     *exec.Cmd
	log     *tail
	exited  chan struct{}
	client  *redis.Client
}

func startRedis(ctx context.Context, dir string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found (apt-get install redis-server): %w", err)
	}
	var lastErr error
	for range 3 { // a freed port can be taken before redis binds it
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		r := &redisServer{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: newTail(32), exited: make(chan struct{})}
		r.cmd = command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", dir)
		r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
		r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := r.cmd.Start(); err != nil {
			return nil, err
		}
		go func() { _ = r.cmd.Wait(); close(r.exited) }()
		r.client = redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1})
		if lastErr = r.waitReady(ctx); lastErr == nil {
			info, _ := r.client.Info(ctx, "server").Result()
			for line := range strings.Lines(info) {
				if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
					r.version = strings.TrimSpace(v)
				}
			}
			return r, nil
		}
		r.stop()
	}
	return nil, fmt.Errorf("start redis-server: %w", lastErr)
}

func (r *redisServer) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("redis-server exited: %s", r.log)
		default:
		}
		if r.client.Ping(ctx).Err() == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server not answering PING on %s: %s", r.addr, r.log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (r *redisServer) url() string { return "redis://" + r.addr + "/0" }
func (r *redisServer) pid() int    { return r.cmd.Process.Pid }

func (r *redisServer) flush(ctx context.Context) error {
	return r.client.FlushAll(ctx).Err()
}

func (r *redisServer) stop() {
	_ = r.client.Close()
	_ = r.cmd.Process.Kill()
	<-r.exited
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// scrape reads the Prometheus text exposition at http://addr/metrics and
// returns the samples whose series starts with one of prefixes, keyed by
// series (name and labels as printed).
func scrape(ctx context.Context, addr string, prefixes ...string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		series := line[:i]
		for _, p := range prefixes {
			if strings.HasPrefix(series, p) {
				if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
					out[series] = v
				}
				break
			}
		}
	}
	return out, sc.Err()
}

// tail keeps the last lines written to it, for error messages.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
	part  []byte
}

func newTail(maxLines int) *tail { return &tail{max: maxLines} }

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part = append(t.part, p...)
	for {
		i := bytes.IndexByte(t.part, '\n')
		if i < 0 {
			break
		}
		t.lines = append(t.lines, string(t.part[:i]))
		t.part = t.part[i+1:]
		if len(t.lines) > t.max {
			t.lines = t.lines[len(t.lines)-t.max:]
		}
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n") + string(t.part)
}

// durationSeries is the broker's request-duration histogram.
const durationSeries = "qlik_token_broker_http_request_duration_seconds_bucket"

// tokenHistogram returns the /v1/token request-duration histogram of the
// brokers at addrs, summed: cumulative count per bucket bound in seconds.
func tokenHistogram(ctx context.Context, addrs []string) (map[float64]float64, error) {
	h := map[float64]float64{}
	for _, a := range addrs {
		m, err := scrape(ctx, a, durationSeries)
		if err != nil {
			return nil, err
		}
		for series, v := range m {
			if label(series, "route") != "/v1/token" {
				continue
			}
			le, err := strconv.ParseFloat(label(series, "le"), 64) // "+Inf" parses
			if err != nil {
				continue
			}
			h[le] += v
		}
	}
	return h, nil
}

// label returns the value of name in a series printed as name{a="x",b="y"}.
func label(series, name string) string {
	_, rest, ok := strings.Cut(series, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// bucketQuantile returns the upper bound of the bucket holding quantile q
// of the requests counted between before and after (math.Inf(1) when only
// the last bucket does; 0 when nothing was counted).
func bucketQuantile(before, after map[float64]float64, q float64) float64 {
	bounds := make([]float64, 0, len(after))
	for le := range after {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	if len(bounds) == 0 {
		return 0
	}
	total := after[bounds[len(bounds)-1]] - before[bounds[len(bounds)-1]]
	if total <= 0 {
		return 0
	}
	for _, le := range bounds {
		if after[le]-before[le] >= q*total {
			return le
		}
	}
	return bounds[len(bounds)-1]
}

// sourceDigest hashes what the broker binary is built from — every non-test
// .go file outside bench/, with go.mod and go.sum — so a result names the
// code it measured even without a commit.
func sourceDigest(root string) (string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || p == filepath.Join(root, "bench")) {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		if (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) || ((name == "go.mod" || name == "go.sum") && filepath.Dir(p) == root) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	slices.Sort(files)
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		rel, _ := filepath.Rel(root, f)
		fmt.Fprintf(h, "%s\x00%d\x00", rel, len(b))
		h.Write(b)
	}
	return fmt.Sprintf("sha256:%x (%d files)", h.Sum(nil)[:8], len(files)), nil
}
