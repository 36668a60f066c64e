package helm_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRedisURLPassword: a password in redis.url is refused with a message
// that says where it goes instead, and never repeats it.
func TestRedisURLPassword(t *testing.T) {
	t.Parallel()
	for name, u := range map[string]string{
		"password only":      "redis://:s3cret@redis:6379",
		"user and password":  "rediss://app:s3cret@redis:6379/0",
		"query parameter":    "redis://sentinel:26379?master_name=m&password=s3cret",
		"sentinel parameter": "redis://sentinel:26379?master_name=m&sentinel_password=s3cret",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, stderr, err := runHelm(t, slices.Concat([]string{"template", "qtb", chartDir, "--kube-version", kubeVersion}, minimal,
				[]string{"--set", "redis.url=" + u})...)
			if err == nil {
				t.Fatalf("rendered with redis.url %s", u)
			}
			for _, want := range []string{"redis.url holds a password", "redis.existingSecret", "QTB_REDIS_PASSWORD_FILE"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("the error does not say %q:\n%s", want, stderr)
				}
			}
			if strings.Contains(stderr, "s3cret") || strings.Contains(stderr, "'not' failed") {
				t.Errorf("the error echoes the secret or says only 'not' failed:\n%s", stderr)
			}
		})
	}
	// A user name alone (an ACL user) is no secret.
	m := render(t, slices.Concat(minimal, []string{"--set", "redis.url=rediss://app@redis:6380/0", "--set", "redis.existingSecret=qtb-redis"})...)
	if got := env(m.deployment(t).Spec.Template.Spec.Containers[0])["QTB_REDIS_URL"]; got != "rediss://app@redis:6380/0" {
		t.Errorf("QTB_REDIS_URL=%q", got)
	}
}

// TestPreStopSleepKubeVersion: the preStop sleep action is on by default
// from Kubernetes 1.30, so the chart refuses preStopSleepSeconds on 1.29
// and renders it from 1.30, in both modes.
func TestPreStopSleepKubeVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		kube    string
		seconds string
		refused bool
	}{
		{"1.29.0", "5", true},
		{"1.29.8", "5", true},
		{"1.29.0", "0", false},
		{"1.30.0", "5", false},
		{"1.31.0", "5", false},
	} {
		for _, mode := range []string{"standalone", "sidecar"} {
			t.Run(mode+"/"+tc.kube+"/"+tc.seconds, func(t *testing.T) {
				t.Parallel()
				out, stderr, err := runHelm(t, slices.Concat([]string{"template", "qtb", chartDir, "--kube-version", tc.kube}, minimal,
					[]string{"--set", "mode=" + mode, "--set", "preStopSleepSeconds=" + tc.seconds})...)
				if tc.refused {
					if err == nil {
						t.Fatal("rendered a preStop sleep for a cluster without the sleep action")
					}
					for _, want := range []string{"preStopSleepSeconds needs Kubernetes 1.30", "v" + tc.kube} {
						if !strings.Contains(stderr, want) {
							t.Errorf("the error does not say %q:\n%s", want, stderr)
						}
					}
					return
				}
				if err != nil {
					t.Fatalf("helm template: %v\n%s", err, stderr)
				}
				m := decodeManifest(t, out)
				var hasSleep bool
				if mode == "standalone" {
					c := m.deployment(t).Spec.Template.Spec.Containers[0]
					hasSleep = c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil &&
						c.Lifecycle.PreStop.Sleep.Seconds == 5
				} else {
					hasSleep = strings.Contains(m.configMaps["qtb-qlik-token-broker-sidecar"].Data["initContainers.yaml"], "sleep:\n")
				}
				if want := tc.seconds != "0"; hasSleep != want {
					t.Errorf("preStop sleep rendered: %v, want %v", hasSleep, want)
				}
			})
		}
	}
}

// TestOTLPTLSNeedsHTTPS: the OTLP exporter refuses TLS settings for an
// http:// endpoint, and the broker would not start, so the chart refuses
// the combination.
func TestOTLPTLSNeedsHTTPS(t *testing.T) {
	t.Parallel()
	ca := `extraEnv=[{"name":"OTEL_EXPORTER_OTLP_CERTIFICATE","value":"/etc/ca/ca.crt"}]`
	for _, tc := range []struct {
		name    string
		args    []string
		refused bool
	}{
		{"http endpoint", []string{"--set", "tracing.otlpEndpoint=http://collector:4318", "--set-json", ca}, true},
		{"http traces endpoint", []string{"--set-json", `extraEnv=[{"name":"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT","value":"http://collector:4318/v1/traces"},{"name":"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY","value":"/etc/c/tls.key"}]`}, true},
		{"https endpoint", []string{"--set", "tracing.otlpEndpoint=https://collector:4318", "--set-json", ca}, false},
		{"http, no TLS", []string{"--set", "tracing.otlpEndpoint=http://collector:4318"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, stderr, err := runHelm(t, slices.Concat([]string{"template", "qtb", chartDir, "--kube-version", kubeVersion}, minimal, tc.args)...)
			switch {
			case tc.refused && err == nil:
				t.Fatal("rendered TLS settings for an http:// OTLP endpoint")
			case tc.refused && !strings.Contains(stderr, "use https://"):
				t.Errorf("the error does not say to use https://:\n%s", stderr)
			case !tc.refused && err != nil:
				t.Fatalf("helm template: %v\n%s", err, stderr)
			}
		})
	}
}

// docFile is a file a document shows in a yaml block whose first line is
// `# <path>`.
var docFile = regexp.MustCompile(`^# ([-\w./]+\.ya?ml)\b`)

// TestDocCommands follows docs/deploy.md and the README as written: every
// yaml block headed `# <path>` is written to that path, and every helm
// command in an sh block runs, in document order, from a directory that
// stands for the repository root (the chart is at ./helm/qlik-token-broker,
// and a copy of it at ./qlik-token-broker for the vendoring example). A
// `cd` holds until the end of its block. helm install and helm upgrade
// --install need a cluster, so they run as helm template with the same
// arguments; every rendered object must decode strictly.
func TestDocCommands(t *testing.T) {
	t.Parallel()
	bin := helmBin(t)
	ran := map[string]int{}
	for _, doc := range []string{"../docs/deploy.md", "../README.md"} {
		t.Run(path.Base(doc), func(t *testing.T) {
			root := t.TempDir()
			for _, dst := range []string{"helm/" + chartDir, chartDir} {
				if err := os.CopyFS(filepath.Join(root, dst), os.DirFS(chartDir)); err != nil {
					t.Fatal(err)
				}
			}
			for _, b := range codeBlocks(t, doc) {
				switch b.lang {
				case "yaml":
					m := docFile.FindStringSubmatch(b.lines[0])
					if m == nil {
						continue
					}
					p := filepath.Join(root, m[1])
					if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(p, []byte(strings.Join(b.lines, "\n")+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				case "sh":
					dir := root
					for _, line := range shellLines(b.lines) {
						words := shellWords(t, line)
						if len(words) == 2 && words[0] == "cd" {
							dir = filepath.Join(dir, words[1])
							continue
						}
						if len(words) < 2 || !isHelm(words[0]) {
							continue
						}
						args := words[1:]
						switch {
						case args[0] == "install":
							args = append([]string{"template"}, args[1:]...)
						case args[0] == "upgrade" && slices.Contains(args, "--install"):
							args = append([]string{"template"}, slices.DeleteFunc(args[1:], func(a string) bool { return a == "--install" })...)
						}
						if args[0] == "template" && !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--kube-version") }) {
							args = append(args, "--kube-version", kubeVersion)
						}
						out, stderr, err := runHelmIn(t, bin, dir, args...)
						if err != nil {
							t.Errorf("%s:%d: %s: %v\n%s%s", doc, b.line, line, err, out, stderr)
							continue
						}
						if args[0] == "template" {
							decodeManifest(t, out)
						}
						ran[strings.Join(args[:min(2, len(args))], " ")]++
						t.Logf("ran: helm %s", strings.Join(args, " "))
					}
				}
			}
		})
	}
	for _, want := range []string{"template qtb", "template oem-app", "lint --strict", "dependency build"} {
		if ran[want] == 0 {
			t.Errorf("no `helm %s` found in the docs (ran %v): did the documents or the test's reading of them change?", want, ran)
		}
	}
}

// block is a fenced code block of a Markdown document.
type block struct {
	lang  string
	line  int // of the opening fence
	lines []string
}

func codeBlocks(t *testing.T, file string) []block {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []block
	var cur *block
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &block{lang: strings.TrimPrefix(line, "```"), line: n}
		case cur != nil && line == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, line)
		}
	}
	return out
}

// shellLines joins continued lines and drops comments.
func shellLines(lines []string) []string {
	var out []string
	var cur string
	for _, l := range lines {
		if c, ok := strings.CutSuffix(l, `\`); ok {
			cur += c
			continue
		}
		cur += l
		if s := strings.TrimSpace(cur); s != "" && !strings.HasPrefix(s, "#") {
			out = append(out, s)
		}
		cur = ""
	}
	return out
}

// shellWords splits a simple command line: quotes, no expansion, and a
// trailing comment dropped. Anything the shell would expand fails the test.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range line {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words, inWord = append(words, w.String()), false
				w.Reset()
			}
		case r == '#' && !inWord:
			return words
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	if len(words) > 0 && isHelm(words[0]) && strings.ContainsAny(line, "$`|;&<>") {
		t.Fatalf("%s: the test runs helm commands without a shell; keep them free of expansions and pipes", line)
	}
	return words
}

// isHelm reports whether a command's first word runs helm (helm,
// .cache/bin/helm), not a variable assignment such as QTB_HELM=....
func isHelm(word string) bool {
	return !strings.Contains(word, "=") && path.Base(word) == "helm"
}

// runHelmIn runs helm in dir, as runHelm does (config, cache and data in
// a temporary directory).
func runHelmIn(t *testing.T, bin, dir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}
