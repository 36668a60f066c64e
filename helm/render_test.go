// Package helm_test renders the chart in qlik-token-broker/ with the real
// helm binary and checks what Kubernetes would receive: every document decodes
// strictly into its k8s.io/api type, the pod meets Pod Security "restricted",
// secrets reach the broker only as files from existing Secrets, every QTB_*
// setting of ../config.go is reachable from values, and the dashboard and
// alerts query only metrics the broker exports.
//
// The tests are split by concern: render_test.go (running helm, decoding its
// output), values_test.go (the schema and refused values), security_test.go
// (Pod Security and secrets as files), deployment_test.go, redis_test.go,
// tenants_test.go, sidecar_test.go, monitoring_test.go (the dashboard and
// rules against metrics.New), settings_test.go (every QTB_* setting
// reachable) and rules_test.go (the alerts under promtool).
//
// helm comes from $QTB_HELM or the PATH; without it the tests skip. CI
// installs it with `GOBIN=<dir> go install helm.sh/helm/v3/cmd/helm@v3.22.0`.
package helm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "qlik-token-broker"
	dashboard   = chartDir + "/dashboards/qlik-token-broker.json"
	allOptions  = chartDir + "/ci/all-options-values.yaml"
	sidecarFile = chartDir + "/ci/sidecar-values.yaml"
	namespace   = "brokers"
	// kubeVersion satisfies the chart's kubeVersion (>=1.29); helm template
	// otherwise assumes v1.20.
	kubeVersion = "1.31.0"
	monitoring  = "monitoring.coreos.com/v1"
	brokerUID   = 65532
)

// helmBin finds helm, or skips the test.
func helmBin(t *testing.T) string {
	t.Helper()
	return toolBin(t, "QTB_HELM", "helm", "GOBIN=<dir> go install helm.sh/helm/v3/cmd/helm@v3.22.0")
}

// toolBin finds a command from $env or the PATH, or skips the test saying
// how to install it (the command install).
func toolBin(t *testing.T, env, name, install string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", env, p, err)
		}
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Skipf("%s not found: set %s or put %s on the PATH (%s)", name, env, name, install)
	return ""
}

// runHelm runs helm with its config, cache and data in a temporary directory.
func runHelm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := helmBin(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, args...)
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

// manifest is one `helm template` output, decoded.
type manifest struct {
	raw             []string // every document, as rendered
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	serviceAccounts []*corev1.ServiceAccount
	configMaps      map[string]*corev1.ConfigMap
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	netpols         []*networkingv1.NetworkPolicy
	serviceMonitors []map[string]any
	prometheusRules []map[string]any
	kinds           []string
}

// render runs `helm template` on the chart and decodes every document
// strictly: an unknown or misspelt field fails the test.
func render(t *testing.T, args ...string) *manifest {
	t.Helper()
	return renderChart(t, chartDir, args...)
}

func renderChart(t *testing.T, dir string, args ...string) *manifest {
	t.Helper()
	out, stderr, err := runHelm(t, append([]string{"template", "qtb", dir,
		"--namespace", namespace, "--kube-version", kubeVersion}, args...)...)
	if err != nil {
		t.Fatalf("helm template %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return decodeManifest(t, out)
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func decodeManifest(t *testing.T, out string) *manifest {
	t.Helper()
	m := &manifest{configMaps: map[string]*corev1.ConfigMap{}}
	for _, doc := range docSeparator.Split(out, -1) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		if meta.Kind == "" {
			continue // comments only
		}
		m.raw = append(m.raw, doc)
		m.kinds = append(m.kinds, meta.Kind)
		want, obj := "", any(nil)
		switch meta.Kind {
		case "Deployment":
			d := &appsv1.Deployment{}
			m.deployments, want, obj = append(m.deployments, d), "apps/v1", d
		case "Service":
			s := &corev1.Service{}
			m.services, want, obj = append(m.services, s), "v1", s
		case "ServiceAccount":
			s := &corev1.ServiceAccount{}
			m.serviceAccounts, want, obj = append(m.serviceAccounts, s), "v1", s
		case "ConfigMap":
			want, obj = "v1", &corev1.ConfigMap{}
		case "PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			m.pdbs, want, obj = append(m.pdbs, p), "policy/v1", p
		case "HorizontalPodAutoscaler":
			h := &autoscalingv2.HorizontalPodAutoscaler{}
			m.hpas, want, obj = append(m.hpas, h), "autoscaling/v2", h
		case "NetworkPolicy":
			n := &networkingv1.NetworkPolicy{}
			m.netpols, want, obj = append(m.netpols, n), "networking.k8s.io/v1", n
		case "ServiceMonitor", "PrometheusRule":
			var u map[string]any
			if err := yaml.UnmarshalStrict([]byte(doc), &u); err != nil {
				t.Fatalf("%s: %v", meta.Kind, err)
			}
			if meta.APIVersion != monitoring {
				t.Errorf("%s: apiVersion %s, want %s", meta.Kind, meta.APIVersion, monitoring)
			}
			if meta.Kind == "ServiceMonitor" {
				m.serviceMonitors = append(m.serviceMonitors, u)
			} else {
				m.prometheusRules = append(m.prometheusRules, u)
			}
			continue
		default:
			t.Fatalf("unexpected kind %s:\n%s", meta.Kind, doc)
		}
		if meta.APIVersion != want {
			t.Errorf("%s: apiVersion %s, want %s", meta.Kind, meta.APIVersion, want)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", meta.Kind, err, doc)
		}
		if c, ok := obj.(*corev1.ConfigMap); ok {
			m.configMaps[c.Name] = c
		}
	}
	return m
}

func (m *manifest) count(kind string) int {
	n := 0
	for _, k := range m.kinds {
		if k == kind {
			n++
		}
	}
	return n
}

func (m *manifest) deployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	if len(m.deployments) != 1 {
		t.Fatalf("want 1 Deployment, got %d (kinds %v)", len(m.deployments), m.kinds)
	}
	return m.deployments[0]
}

func env(c corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		out[e.Name] = e.Value
	}
	return out
}

func chartAppVersion(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(raw, &meta); err != nil || meta.AppVersion == "" {
		t.Fatalf("Chart.yaml appVersion: %v", err)
	}
	return meta.AppVersion
}

func sameKinds(got []string, want ...string) bool {
	got, want = slices.Clone(got), slices.Clone(want)
	sort.Strings(got)
	sort.Strings(want)
	return slices.Equal(got, want)
}

func subset(sub, of map[string]string) bool {
	if len(sub) == 0 {
		return false
	}
	for k, v := range sub {
		if of[k] != v {
			return false
		}
	}
	return true
}

func subsetAny(sub map[string]any, of map[string]string) bool {
	m := map[string]string{}
	for k, v := range sub {
		m[k] = fmt.Sprint(v)
	}
	return subset(m, of)
}

func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			panic(errors.New("not a map at " + k))
		}
		v = m[k]
	}
	return v
}

// walk calls fn for every string leaf with its path; strings holding YAML
// (ConfigMap data) are walked into as well.
func walk(v any, p string, fn func(path, s string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			walk(e, p+"."+k, fn)
		}
	case []any:
		for i, e := range v {
			walk(e, fmt.Sprintf("%s[%d]", p, i), fn)
		}
	case string:
		var inner any
		if strings.Contains(v, "\n") && yaml.Unmarshal([]byte(v), &inner) == nil {
			if _, ok := inner.(string); !ok && inner != nil {
				walk(inner, p+"|", fn)
				return
			}
		}
		fn(p, v)
	}
}
