package main

import (
	"bufio"
	"bytes"
	"context"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// goBenchPattern selects the testing.B benchmarks the suite reports:
// session verification per algorithm, sealing, the L1 map, and the broker's in-process
// handler (no network) for comparison with the end-to-end figures.
const goBenchPattern = "BenchmarkVerify|BenchmarkSeal|BenchmarkOpen|BenchmarkMemory|BenchmarkToken|BenchmarkKeyName"

var goBenchPackages = []string{"./session", "./cache", "./broker"}

// runGoBench runs the benchmarks and parses their output. A package that
// does not build or fails is reported in Error; the others still count.
func runGoBench(ctx context.Context, benchtime string) GoBench {
	root, err := moduleRoot(ctx)
	if err != nil {
		return GoBench{Error: err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	args := append([]string{"test", "-run", "^$", "-bench", goBenchPattern, "-benchmem", "-benchtime", benchtime, "-count", "1"}, goBenchPackages...)
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	g := GoBench{Command: "go " + strings.Join(args, " "), Results: parseGoBench(out.Bytes())}
	if runErr != nil {
		g.Error = runErr.Error() + ": " + failures(out.Bytes())
	}
	return g
}

// parseGoBench reads `go test -bench -benchmem` output.
func parseGoBench(out []byte) []BenchLine {
	var lines []BenchLine
	pkg := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		b := BenchLine{Package: pkg, Name: trimProcs(f[0])}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				b.NsPerOp = v
			case "B/op":
				b.BytesPerOp = v
			case "allocs/op":
				b.AllocsPerOp = v
			}
		}
		if b.NsPerOp > 0 {
			lines = append(lines, b)
		}
	}
	return lines
}

// trimProcs drops the -GOMAXPROCS suffix of a benchmark name.
func trimProcs(name string) string {
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			return name[:i]
		}
	}
	return name
}

// failures keeps the lines of go test output that explain a failure.
func failures(out []byte) string {
	var keep []string
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "#") || strings.Contains(line, ".go:") {
			keep = append(keep, strings.TrimSpace(line))
		}
		if len(keep) == 10 {
			break
		}
	}
	return strings.Join(keep, "; ")
}
