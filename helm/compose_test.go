package helm_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// dockerfile is the image the chart runs.
const dockerfile = "../Dockerfile"

// image is what the Dockerfile's final stage tells the container runtime.
type image struct {
	entrypoint  []string // ENTRYPOINT, exec form
	cmd         []string // CMD, exec form; nil when unset
	healthcheck []string // HEALTHCHECK CMD, exec form
	binaries    []string // COPY destinations: the files the image holds
}

// readImage parses the final stage of the Dockerfile. Only the exec (JSON)
// form is accepted: the runtime image has no /bin/sh to run a shell form.
func readImage(t *testing.T, file string) image {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments, keep the final stage.
	var instrs []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue // Docker drops these, inside continuations too
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(l + " ")
			continue
		}
		cur.WriteString(line)
		if word, _, _ := strings.Cut(cur.String(), " "); strings.EqualFold(word, "FROM") {
			instrs = instrs[:0]
		}
		instrs = append(instrs, cur.String())
		cur.Reset()
	}
	if len(instrs) == 0 {
		t.Fatalf("%s: no final stage", file)
	}
	execForm := func(instr, rest string) []string {
		var argv []string
		if err := json.Unmarshal([]byte(strings.TrimSpace(rest)), &argv); err != nil || len(argv) == 0 {
			t.Fatalf("%s: %s %s: want the exec form, a JSON array (the image has no shell)", file, instr, rest)
		}
		return argv
	}
	var img image
	var sawEntrypoint bool
	for _, in := range instrs[1:] {
		word, rest, _ := strings.Cut(in, " ")
		switch strings.ToUpper(word) {
		case "ENTRYPOINT":
			// Docker drops the base image's CMD here; one set in this
			// stage stays. Either way cmd is what this stage set.
			img.entrypoint, sawEntrypoint = execForm(word, rest), true
		case "CMD":
			img.cmd = execForm(word, rest)
		case "HEALTHCHECK":
			_, after, ok := strings.Cut(rest, " CMD ")
			if !ok {
				t.Fatalf("%s: HEALTHCHECK %s: want ... CMD [...]", file, rest)
			}
			img.healthcheck = execForm("HEALTHCHECK CMD", after)
		case "COPY":
			f := strings.Fields(rest)
			img.binaries = append(img.binaries, f[len(f)-1])
		}
	}
	if !sawEntrypoint {
		// The base image's would apply; the test cannot see it.
		t.Fatalf("%s: the final stage sets no ENTRYPOINT", file)
	}
	return img
}

// argv composes a container's command line the way the kubelet does with
// the image's: command replaces ENTRYPOINT and drops CMD; args replaces CMD
// (https://kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/#notes).
// `docker run image args...` is the same as args without command.
func (img image) argv(t *testing.T, command, args []string) []string {
	t.Helper()
	for _, a := range slices.Concat(command, args) {
		if strings.Contains(a, "$(") {
			t.Fatalf("%q: the kubelet would expand $(VAR) references; teach the test to", a)
		}
	}
	switch {
	case len(command) > 0:
		return slices.Concat(command, args)
	case len(args) > 0:
		return slices.Concat(img.entrypoint, args)
	default:
		return slices.Concat(img.entrypoint, img.cmd)
	}
}

// buildBroker builds the broker as the image's build stage does (static),
// into a temporary directory.
func buildBroker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "qlik-token-broker")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", bin, ".")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestImageRunsTheChartsContainer composes every rendered broker container
// (standalone and sidecar, for each ci values file) with the Dockerfile's
// ENTRYPOINT and CMD as Kubernetes does, runs the result with the
// container's environment and files, and requires its startup probe and
// /healthz to answer 200, the image's HEALTHCHECK to pass, and a clean exit
// on SIGTERM. It also runs the image as `docker run image`,
// `docker run image healthcheck`, `docker run image version` and
// `docker run image serve -h`, the convention docs/deploy.md states.
func TestImageRunsTheChartsContainer(t *testing.T) {
	t.Parallel()
	helmBin(t) // skip early, before building
	img := readImage(t, dockerfile)
	bin := buildBroker(t)
	fix := newFixtures(t)
	// oneShot runs a command line that exits by itself.
	oneShot := func(t *testing.T, argv []string, env []string) (string, error) {
		t.Helper()
		if !slices.Contains(img.binaries, argv[0]) {
			t.Fatalf("%v runs %q, which the image does not hold (it has %v)", argv, argv[0], img.binaries)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, argv[1:]...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	values, err := filepath.Glob(chartDir + "/ci/*-values.yaml")
	if err != nil || len(values) == 0 {
		t.Fatalf("no ci values files: %v", err)
	}
	for _, file := range values {
		for _, mode := range []string{"standalone", "sidecar"} {
			t.Run(strings.TrimSuffix(filepath.Base(file), "-values.yaml")+"/"+mode, func(t *testing.T) {
				t.Parallel()
				pod := renderPod(t, mode, "-f", file)
				c := pod.container
				if c.StartupProbe == nil || c.StartupProbe.HTTPGet == nil {
					t.Fatal("the container has no HTTP startup probe")
				}
				run := fix.environment(t, pod)
				p := startBroker(t, bin, img, img.argv(t, c.Command, c.Args), run)
				p.requireOK(t, c.StartupProbe.HTTPGet.Path)
				p.requireOK(t, "/healthz")
				if out, err := oneShot(t, img.healthcheck, run.env); err != nil {
					t.Errorf("HEALTHCHECK %v: %v\n%s", img.healthcheck, err, out)
				}
				p.stop(t)
			})
		}
	}

	// The image alone, as `docker run` starts it: with no arguments it
	// serves; an argument names the subcommand.
	t.Run("docker run", func(t *testing.T) {
		t.Parallel()
		run := fix.environment(t, renderPod(t, "standalone", "-f", sidecarFile))
		p := startBroker(t, bin, img, img.argv(t, nil, nil), run)
		p.requireOK(t, "/healthz")
		if out, err := oneShot(t, img.argv(t, nil, []string{"healthcheck"}), run.env); err != nil {
			t.Errorf("docker run image healthcheck: %v\n%s", err, out)
		}
		p.stop(t)
		out, err := oneShot(t, img.argv(t, nil, []string{"version"}), nil)
		if err != nil || !strings.HasPrefix(out, "qlik-token-broker ") {
			t.Errorf("docker run image version: %v\n%s", err, out)
		}
		out, err = oneShot(t, img.argv(t, nil, []string{"serve", "-h"}), nil)
		if err != nil || !strings.Contains(out, "QTB_TENANT_URL") {
			t.Errorf("docker run image serve -h: %v\n%s", err, out)
		}
	})
}

// pod is one rendered broker container with what it mounts.
type pod struct {
	container  corev1.Container
	volumes    []corev1.Volume
	configMaps map[string]*corev1.ConfigMap // rendered by the chart
}

// renderPod renders the chart in mode and returns the broker's container:
// the Deployment's, or the sidecar block's.
func renderPod(t *testing.T, mode string, args ...string) pod {
	t.Helper()
	m := render(t, append(slices.Clone(args), "--set", "mode="+mode)...)
	p := pod{configMaps: m.configMaps}
	if mode == "standalone" {
		spec := m.deployment(t).Spec.Template.Spec
		if len(spec.Containers) != 1 {
			t.Fatalf("%d containers", len(spec.Containers))
		}
		p.container, p.volumes = spec.Containers[0], spec.Volumes
		return p
	}
	for name, cm := range m.configMaps {
		if !strings.HasSuffix(name, "-sidecar") {
			continue
		}
		block := cm.Data["initContainers.yaml"] + cm.Data["containers.yaml"]
		var cs []corev1.Container
		if err := yaml.UnmarshalStrict([]byte(block), &cs); err != nil || len(cs) != 1 {
			t.Fatalf("%s: %v, %d containers\n%s", name, err, len(cs), block)
		}
		if err := yaml.UnmarshalStrict([]byte(cm.Data["volumes.yaml"]), &p.volumes); err != nil {
			t.Fatalf("%s volumes.yaml: %v", name, err)
		}
		p.container = cs[0]
		return p
	}
	t.Fatalf("no sidecar ConfigMap among %v", m.kinds)
	return p
}

// fixtures are what stands in for the cluster: file contents for Secrets
// the operator creates, and local servers for the URLs the broker calls
// while it runs.
type fixtures struct {
	files map[string]string // by the variable (or tenants-file field) naming the file
	otlp  map[string]string // OTLP/HTTP sinks, by scheme (http, https)
	jwks  string            // a JWKS document
}

func newFixtures(t *testing.T) *fixtures {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "qtb-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}))
	sealKey := make([]byte, 32)
	rand.Read(sealKey)
	secret := "test-secret-" + strings.Repeat("x", 40) + "\n" // ≥32 bytes, as HMAC keys must be

	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	otlp := map[string]string{}
	for _, scheme := range []string{"http", "https"} {
		sink := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
		}))
		if scheme == "https" {
			sink.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
			sink.StartTLS()
		} else {
			sink.Start()
		}
		t.Cleanup(sink.Close)
		otlp[scheme] = sink.URL
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		b64 := base64.RawURLEncoding.EncodeToString
		fmt.Fprintf(w, `{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":%q,"y":%q}]}`,
			b64(key.X.FillBytes(make([]byte, 32))), b64(key.Y.FillBytes(make([]byte, 32))))
	}))
	t.Cleanup(jwks.Close)

	return &fixtures{
		files: map[string]string{
			"QTB_CLIENT_SECRET_FILE":                secret,
			"QTB_ADMIN_CLIENT_SECRET_FILE":          secret,
			"QTB_SESSION_HMAC_SECRET_FILE":          secret,
			"QTB_SERVICE_HMAC_SECRET_FILE":          secret,
			"QTB_SESSION_PUBLIC_KEY_FILE":           pubPEM,
			"QTB_SERVICE_PUBLIC_KEY_FILE":           pubPEM,
			"QTB_REDIS_PASSWORD_FILE":               secret,
			"QTB_REDIS_SENTINEL_PASSWORD_FILE":      secret,
			"QTB_REDIS_CA_FILE":                     certPEM,
			"QTB_CACHE_KEY_FILE":                    "k1:" + base64.StdEncoding.EncodeToString(sealKey) + "\n",
			"OTEL_EXPORTER_OTLP_CERTIFICATE":        certPEM,
			"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": certPEM,
			"OTEL_EXPORTER_OTLP_CLIENT_KEY":         keyPEM,
			"clientSecretFile":                      secret,
			"adminClientSecretFile":                 secret,
		},
		otlp: otlp,
		jwks: jwks.URL + "/.well-known/jwks.json",
	}
}

// container is a rendered container made runnable here.
type container struct {
	env []string // as the kubelet sets it, with local paths and endpoints
	api string   // where QTB_LISTEN now listens
}

// environment returns the container's environment as the kubelet would set
// it, made to run locally: each volume mount becomes a directory under a
// temporary root holding the files the variables name (a ConfigMap the
// chart renders with its rendered data, the operator's Secrets and
// ConfigMaps with test contents), paths point there, the listeners move to
// free loopback ports, and network endpoints move to local servers; Redis,
// a soft dependency, to a port where nothing listens.
func (f *fixtures) environment(t *testing.T, p pod) container {
	t.Helper()
	fs := &mountedFiles{root: t.TempDir(), pod: p, fixtures: f, mounts: map[string]corev1.VolumeMount{}}
	for _, vm := range p.container.VolumeMounts {
		fs.mounts[vm.MountPath] = vm
		if err := os.MkdirAll(filepath.Join(fs.root, vm.MountPath), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := container{api: freeAddr(t)}
	closed := freeAddr(t)
	for _, e := range p.container.Env {
		if e.ValueFrom != nil {
			t.Fatalf("%s comes from %+v: the test knows literal values only", e.Name, e.ValueFrom)
		}
		v := e.Value
		switch e.Name {
		case "QTB_LISTEN":
			v = c.api
		case "QTB_METRICS_LISTEN":
			v = freeAddr(t)
		case "QTB_REDIS_URL":
			u, err := url.Parse(v)
			if err != nil {
				t.Fatalf("QTB_REDIS_URL: %v", err)
			}
			q := u.Query()
			for i := range q["addr"] {
				q["addr"][i] = closed
			}
			u.Host, u.RawQuery = closed, q.Encode()
			v = u.String()
		case "QTB_REDIS_ADDRS":
			v = strings.Repeat(closed+",", strings.Count(v, ",")) + closed
		case "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
			u, err := url.Parse(v)
			if err != nil || f.otlp[u.Scheme] == "" {
				t.Fatalf("%s=%s: want an http(s) URL (%v)", e.Name, v, err)
			}
			local, _ := url.Parse(f.otlp[u.Scheme])
			u.Host = local.Host
			v = u.String()
		case "QTB_SESSION_JWKS_URL", "QTB_SERVICE_JWKS_URL":
			v = f.jwks
		default:
			v = fs.place(t, e.Name, v)
		}
		c.env = append(c.env, e.Name+"="+v)
	}
	return c
}

// mountedFiles lays out a container's mounts under root.
type mountedFiles struct {
	root     string
	pod      pod
	fixtures *fixtures
	mounts   map[string]corev1.VolumeMount // by mountPath
}

// mount returns the volume mount holding the file at the absolute path p.
func (fs *mountedFiles) mount(p string) (corev1.VolumeMount, bool) {
	if !path.IsAbs(p) {
		return corev1.VolumeMount{}, false
	}
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if vm, ok := fs.mounts[d]; ok {
			return vm, true
		}
	}
	return corev1.VolumeMount{}, false
}

// place maps each element of the path list v that is a mount, or a file in
// one, under root, writing the file named by name: a ConfigMap the chart
// rendered supplies its data, anything else a fixture.
func (fs *mountedFiles) place(t *testing.T, name, v string) string {
	t.Helper()
	parts := strings.Split(v, ":")
	for i, p := range parts {
		if _, ok := fs.mounts[p]; ok {
			parts[i] = filepath.Join(fs.root, p)
			continue
		}
		vm, ok := fs.mount(p)
		if !ok {
			continue // in no mount: the broker would not find it either
		}
		content, ok := fs.fixtures.files[name]
		if data, rendered := fs.rendered(vm, path.Base(p)); rendered {
			content, ok = data, true
		}
		if !ok {
			t.Fatalf("%s=%s: the test has no content for this file: add a fixture", name, p)
		}
		if name == "QTB_TENANTS_FILE" {
			content = fs.tenantsFile(t, content)
		}
		parts[i] = filepath.Join(fs.root, p)
		if _, err := os.Stat(parts[i]); err == nil {
			continue // named twice
		}
		if err := os.WriteFile(parts[i], []byte(content), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return strings.Join(parts, ":")
}

// rendered returns the data behind file in the volume of vm when the volume
// is a ConfigMap the chart renders.
func (fs *mountedFiles) rendered(vm corev1.VolumeMount, file string) (string, bool) {
	i := slices.IndexFunc(fs.pod.volumes, func(v corev1.Volume) bool { return v.Name == vm.Name })
	if i < 0 || fs.pod.volumes[i].ConfigMap == nil {
		return "", false
	}
	src := fs.pod.volumes[i].ConfigMap
	cm, ok := fs.pod.configMaps[src.Name]
	if !ok {
		return "", false
	}
	key := file
	for _, it := range src.Items {
		if it.Path == file {
			key = it.Key
		}
	}
	data, ok := cm.Data[key]
	return data, ok
}

// tenantsFile places the secret files a tenants file names and points it
// at them.
func (fs *mountedFiles) tenantsFile(t *testing.T, content string) string {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(content), &doc); err != nil {
		t.Fatalf("the rendered tenants file: %v\n%s", err, content)
	}
	tenants, _ := doc["tenants"].([]any)
	for _, te := range tenants {
		m, _ := te.(map[string]any)
		for k, v := range m {
			if s, ok := v.(string); ok && strings.HasSuffix(k, "File") {
				m[k] = fs.place(t, k, s)
			}
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// freeAddr returns a loopback address where nothing listens now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// process is a running broker.
type process struct {
	cmd  *exec.Cmd
	api  string
	out  *lockedBuffer
	done chan error
}

// startBroker runs argv, whose first element is the image's binary, as the
// built broker.
func startBroker(t *testing.T, bin string, img image, argv []string, c container) *process {
	t.Helper()
	if !slices.Contains(img.binaries, argv[0]) {
		t.Fatalf("the container runs %q, which the image does not hold (it has %v)", argv[0], img.binaries)
	}
	p := &process{cmd: exec.Command(bin, argv[1:]...), api: c.api, out: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = c.env, p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	t.Logf("running %v", argv)
	return p
}

// requireOK waits for GET path on the API to answer 200, as a probe would.
func (p *process) requireOK(t *testing.T, probe string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("the container exited before %s answered 200: %v\n%s", probe, err, p.out)
		default:
		}
		resp, err := http.Get("http://" + p.api + probe)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET %s: %s after 30s\n%s", probe, last, p.out)
}

// stop sends SIGTERM, as the kubelet does, and requires a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, p.out)
		}
	case <-time.After(time.Minute):
		t.Errorf("still running a minute after SIGTERM\n%s", p.out)
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
