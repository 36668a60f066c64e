// Package helm_test renders the chart in qlik-token-broker/ with the real
// helm binary and checks what Kubernetes would receive: every document decodes
// strictly into its k8s.io/api type, the pod meets Pod Security "restricted",
// secrets reach the broker only as files from existing Secrets, every QTB_*
// setting of ../config.go is reachable from values, and the dashboard and
// alerts query only metrics the broker exports.
//
// helm comes from $QTB_HELM or the PATH; without it the tests skip. CI
// installs it with `GOBIN=<dir> go install helm.sh/helm/v3/cmd/helm@v3.22.0`.
package helm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
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

// minimal is the smallest configuration the chart accepts.
var minimal = []string{
	"--set", "config.tenantUrl=https://acme.eu.qlikcloud.com",
	"--set", "config.clientId=client-id",
	"--set", "secrets.clientSecret.existingSecret=qtb-client",
	"--set", "secrets.sessionHmacSecret.existingSecret=qtb-session",
}

// Secret names that must show up only where a Secret is referenced by name:
// never in an env value, a ConfigMap, a label or an annotation.
var sentinels = map[string]string{
	"secrets.clientSecret.existingSecret":      "sentinel-client-secret-3e1f",
	"secrets.adminClientSecret.existingSecret": "sentinel-admin-secret-5a81",
	"secrets.sessionHmacSecret.existingSecret": "sentinel-hmac-secret-9b2c",
	"secrets.serviceHmacSecret.existingSecret": "sentinel-service-hmac-6f3d",
	"redis.existingSecret":                     "sentinel-redis-password-4d7a",
	"redis.sentinelPassword.existingSecret":    "sentinel-redis-sentinel-password-7b19",
	"secrets.cacheKey.existingSecret":          "sentinel-cache-key-0c5e",
}

// singleTenantSecrets are the sentinels a tenants file replaces.
var singleTenantSecrets = []string{"secrets.clientSecret.existingSecret", "secrets.adminClientSecret.existingSecret"}

// singleTenant turns the multi-tenant all-options file into one tenant,
// with email lookups through the admin client.
var singleTenant = []string{
	"--set", "tenants.inline=", "--set-json", "tenants.secrets=[]",
	"--set", "config.tenantUrl=https://acme.eu.qlikcloud.com", "--set", "config.clientId=client-id",
	"--set", "secrets.clientSecret.existingSecret=qtb-client",
	"--set", "config.adminClientId=admin-client-id", "--set", "secrets.adminClientSecret.existingSecret=qtb-admin",
	"--set", "config.userLookup=email", "--set", "config.createUsers=true",
}

// multiTenant turns minimal into two tenants, each with its Secret.
var multiTenant = []string{
	"--set", "config.tenantUrl=", "--set", "config.clientId=", "--set", "secrets.clientSecret.existingSecret=",
	"--set", "config.tenantClaim=tenant",
	"--set-json", `tenants.inline="tenants:\n- {id: acme, url: 'https://acme.eu.qlikcloud.com', clientId: a, clientSecretFile: /etc/qlik-token-broker/acme/client-secret}\n- {id: globex, url: 'https://globex.us.qlikcloud.com', clientId: g, clientSecretFile: /etc/qlik-token-broker/globex/client-secret, adminClientId: ga, adminClientSecretFile: /etc/qlik-token-broker/globex/admin-secret}\n"`,
	"--set-json", `tenants.secrets=[{"name":"qtb-acme","mountPath":"/etc/qlik-token-broker/acme"},{"name":"qtb-globex","mountPath":"/etc/qlik-token-broker/globex/"}]`,
}

// pendingSettings are variables the chart already sets for broker features
// still being built; anything else the chart sets must be in settings().
var pendingSettings []string

// knownMetrics are the series the broker exports today (metrics/metrics.go).
// Dashboards and alerts may query nothing else.
var knownMetrics = []string{
	"qlik_token_broker_build_info",
	"qlik_token_broker_cache_lookups_total",
	"qlik_token_broker_cache_unseal_failures_total",
	"qlik_token_broker_http_origin_rejections_total",
	"qlik_token_broker_http_request_duration_seconds_bucket",
	"qlik_token_broker_http_requests_total",
	"qlik_token_broker_proxy_request_duration_seconds_bucket",
	"qlik_token_broker_proxy_requests_total",
	"qlik_token_broker_redis_degraded",
	"qlik_token_broker_redis_errors_total",
	"qlik_token_broker_session_rejections_total",
	"qlik_token_broker_token_coalesced_requests_total",
	"qlik_token_broker_token_leases_total",
	"qlik_token_broker_token_refreshes_total",
	"qlik_token_broker_token_rejections_total",
	"qlik_token_broker_upstream_breaker_state",
	"qlik_token_broker_upstream_cooldown_until_timestamp_seconds",
	"qlik_token_broker_upstream_invalid_credentials_total",
	"qlik_token_broker_upstream_queue_wait_seconds_bucket",
	"qlik_token_broker_upstream_request_duration_seconds_bucket",
	"qlik_token_broker_upstream_requests_total",
	"qlik_token_broker_upstream_retries_total",
}

var metricName = regexp.MustCompile(`qlik_token_broker_[a-z_]+`)

// DashboardMetricNames returns, sorted and once each, every metric the Grafana
// dashboard queries (panel targets and template variables).
func DashboardMetricNames() ([]string, error) {
	raw, err := os.ReadFile(dashboard)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", dashboard, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		q, _ := json.Marshal(v.Query)
		exprs = append(exprs, string(q))
	}
	return metricNames(exprs...), nil
}

func metricNames(exprs ...string) []string {
	var names []string
	for _, e := range exprs {
		names = append(names, metricName.FindAllString(e, -1)...)
	}
	sort.Strings(names)
	return slices.Compact(names)
}

// helmBin finds helm, or skips the test.
func helmBin(t *testing.T) string {
	t.Helper()
	return toolBin(t, "QTB_HELM", "helm", "helm.sh/helm/v3/cmd/helm@v3.22.0")
}

// toolBin finds a command from $env or the PATH, or skips the test saying
// how to install it (the Go package pkg).
func toolBin(t *testing.T, env, name, pkg string) string {
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
	t.Skipf("%s not found: set %s or put %s on the PATH (GOBIN=<dir> go install %s)", name, env, name, pkg)
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

// sentinelArgs sets the sentinel Secret names of the given values, and
// returns them.
func sentinelArgs(keys ...string) (args, names []string) {
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--set", k+"="+sentinels[k])
		names = append(names, sentinels[k])
	}
	return args, names
}

// multiTenantSentinels: every sentinel but the single-tenant ones, plus the
// all-options file's tenants.secrets renamed to sentinels.
func multiTenantSentinels(t *testing.T) (args, names []string) {
	t.Helper()
	var keys []string
	for k := range sentinels {
		if !slices.Contains(singleTenantSecrets, k) {
			keys = append(keys, k)
		}
	}
	args, names = sentinelArgs(keys...)
	raw, err := os.ReadFile(allOptions)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Tenants struct {
			Secrets []map[string]any `json:"secrets"`
		} `json:"tenants"`
	}
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Tenants.Secrets) == 0 {
		t.Fatalf("%s has no tenants.secrets", allOptions)
	}
	for i, s := range v.Tenants.Secrets {
		s["name"] = fmt.Sprintf("sentinel-tenant-%d-8e4b", i)
		names = append(names, s["name"].(string))
	}
	j, err := json.Marshal(v.Tenants.Secrets)
	if err != nil {
		t.Fatal(err)
	}
	return append(args, "--set-json", "tenants.secrets="+string(j)), names
}

func env(c corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		out[e.Name] = e.Value
	}
	return out
}

var secretLooking = regexp.MustCompile(`SECRET|PASSWORD|KEY`)

// notSecret are the files that may come from a ConfigMap.
var notSecret = map[string]bool{"QTB_SESSION_PUBLIC_KEY_FILE": true, "QTB_SERVICE_PUBLIC_KEY_FILE": true, "QTB_REDIS_CA_FILE": true, "QTB_TENANTS_FILE": true}

// checkContainer asserts the broker container's restricted security context,
// its probes, and that secrets reach it only as files.
func checkContainer(t *testing.T, c corev1.Container, volumes []corev1.Volume, apiPort string) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("container: allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("container: readOnlyRootFilesystem must be true")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("container: privileged")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("container: capabilities %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("container: runAsNonRoot must be true")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != brokerUID || sc.RunAsGroup == nil || *sc.RunAsGroup != brokerUID {
		t.Errorf("container: runAsUser/runAsGroup must be %d", brokerUID)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("container: seccompProfile must be RuntimeDefault")
	}

	vars := env(c)
	listen := vars["QTB_LISTEN"]
	var apiContainerPort int32
	for _, p := range c.Ports {
		if p.Name == apiPort {
			apiContainerPort = p.ContainerPort
		}
	}
	if want := fmt.Sprintf(":%d", apiContainerPort); apiContainerPort == 0 || listen != want {
		t.Errorf("QTB_LISTEN=%q, port %s=%d: the probes would miss the broker", listen, apiPort, apiContainerPort)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"startupProbe", c.StartupProbe, "/healthz"},
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != apiPort {
			t.Errorf("%s: GET %s on %s, want GET %s on %s", p.name,
				p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, apiPort)
		}
	}

	if len(c.EnvFrom) > 0 {
		t.Errorf("container: envFrom %+v: variables must be explicit", c.EnvFrom)
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s comes from a Secret key: secrets must be files", e.Name)
		}
		// OpenTelemetry's *_KEY variables (OTEL_EXPORTER_OTLP_CLIENT_KEY) are paths.
		if secretLooking.MatchString(e.Name) && !strings.HasSuffix(e.Name, "_FILE") && !strings.HasPrefix(e.Name, "OTEL_") {
			t.Errorf("env %s looks like a secret but is not a *_FILE path", e.Name)
		}
	}
	checkFiles(t, c, volumes)
}

// checkFiles asserts every *_FILE variable names a file projected from a
// Secret or ConfigMap volume mounted whole (no subPath, so updates land)
// and read-only, and that every chart volume is used.
func checkFiles(t *testing.T, c corev1.Container, volumes []corev1.Volume) {
	t.Helper()
	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		if vm.SubPath != "" || vm.SubPathExpr != "" {
			t.Errorf("volumeMount %s uses subPath: a rotated Secret would never reach it", vm.Name)
		}
		mounts[vm.MountPath] = vm
	}
	byName := map[string]corev1.Volume{}
	for _, v := range volumes {
		byName[v.Name] = v
	}
	used := map[string]bool{}
	for _, e := range c.Env {
		if !strings.HasPrefix(e.Name, "QTB_") || !strings.HasSuffix(e.Name, "_FILE") {
			continue
		}
		if e.ValueFrom != nil || !path.IsAbs(e.Value) {
			t.Errorf("%s=%q: want an absolute path", e.Name, e.Value)
			continue
		}
		vm, ok := mounts[path.Dir(e.Value)]
		if !ok {
			t.Errorf("%s=%s: no volume is mounted at %s", e.Name, e.Value, path.Dir(e.Value))
			continue
		}
		if !vm.ReadOnly {
			t.Errorf("%s: mount %s is not read-only", e.Name, vm.Name)
		}
		v, ok := byName[vm.Name]
		if !ok {
			t.Errorf("%s: mount %s has no volume", e.Name, vm.Name)
			continue
		}
		used[v.Name] = true
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			items = v.Secret.Items
		case v.ConfigMap != nil && notSecret[e.Name]:
			items = v.ConfigMap.Items
		default:
			t.Errorf("%s: volume %s is not a Secret", e.Name, v.Name)
			continue
		}
		if !slices.ContainsFunc(items, func(k corev1.KeyToPath) bool { return k.Path == path.Base(e.Value) && k.Key != "" }) {
			t.Errorf("%s=%s: volume %s does not project %s", e.Name, e.Value, v.Name, path.Base(e.Value))
		}
	}
	// Tenant Secrets are read through the tenants file (checkTenantFiles).
	_, tenantsFile := env(c)["QTB_TENANTS_FILE"]
	for _, v := range volumes {
		if !strings.HasPrefix(v.Name, "qtb-tenant-") {
			continue
		}
		if v.Secret == nil {
			t.Errorf("volume %s: tenant secrets must come from a Secret", v.Name)
		}
		if !tenantsFile {
			t.Errorf("volume %s: a tenant Secret without a tenants file", v.Name)
		}
		used[v.Name] = true
	}
	for _, v := range volumes {
		if strings.HasPrefix(v.Name, "qtb-") && !used[v.Name] {
			t.Errorf("volume %s is mounted but no *_FILE variable reads it", v.Name)
		}
	}
}

// checkTenantFiles asserts every secret file the tenants file names lies in
// a directory where a whole Secret is mounted read-only.
func checkTenantFiles(t *testing.T, tenantsYAML string, c corev1.Container, volumes []corev1.Volume) {
	t.Helper()
	var f struct {
		Tenants []struct {
			ID                    string `json:"id"`
			ClientSecretFile      string `json:"clientSecretFile"`
			AdminClientSecretFile string `json:"adminClientSecretFile"`
		} `json:"tenants"`
	}
	if err := yaml.Unmarshal([]byte(tenantsYAML), &f); err != nil || len(f.Tenants) == 0 {
		t.Fatalf("tenants file: %v\n%s", err, tenantsYAML)
	}
	byName := map[string]corev1.Volume{}
	for _, v := range volumes {
		byName[v.Name] = v
	}
	for _, e := range f.Tenants {
		for _, file := range []string{e.ClientSecretFile, e.AdminClientSecretFile} {
			if file == "" {
				continue
			}
			i := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == path.Dir(file) })
			if i < 0 {
				t.Errorf("tenant %s: %s is in no mounted directory", e.ID, file)
				continue
			}
			vm := c.VolumeMounts[i]
			v := byName[vm.Name]
			switch {
			case !vm.ReadOnly || vm.SubPath != "":
				t.Errorf("tenant %s: mount %s must be read-only, without subPath", e.ID, vm.Name)
			case v.Secret == nil:
				t.Errorf("tenant %s: %s is not from a Secret (volume %s)", e.ID, file, vm.Name)
			case len(v.Secret.Items) > 0:
				t.Errorf("tenant %s: volume %s projects only %v; mount the whole Secret", e.ID, vm.Name, v.Secret.Items)
			}
		}
	}
}

// checkPod asserts the pod-level half of Pod Security "restricted".
func checkPod(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	sc := spec.SecurityContext
	if sc == nil {
		t.Fatal("pod has no securityContext")
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("pod: runAsNonRoot must be true")
	}
	for name, id := range map[string]*int64{"runAsUser": sc.RunAsUser, "runAsGroup": sc.RunAsGroup, "fsGroup": sc.FSGroup} {
		if id == nil || *id != brokerUID {
			t.Errorf("pod: %s must be %d", name, brokerUID)
		}
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod: seccompProfile must be RuntimeDefault")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("pod: automountServiceAccountToken must be false")
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Error("pod: host namespaces")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("pod: want 1 container, got %d", len(spec.Containers))
	}
}

// checkSentinels asserts each sentinel Secret name appears only as a
// volume's secretName, also inside YAML held in ConfigMap data.
func checkSentinels(t *testing.T, m *manifest, names ...string) {
	t.Helper()
	found := map[string]bool{}
	for _, doc := range m.raw {
		var u any
		if err := yaml.Unmarshal([]byte(doc), &u); err != nil {
			t.Fatal(err)
		}
		walk(u, "", func(p, s string) {
			for _, name := range names {
				if !strings.Contains(s, name) {
					continue
				}
				if !strings.HasSuffix(p, ".secret.secretName") || s != name {
					t.Errorf("secret name %s appears at %s", name, p)
				}
				found[name] = true
			}
		})
	}
	for _, name := range names {
		if !found[name] {
			t.Errorf("secret name %s is not referenced at all", name)
		}
	}
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

func TestLint(t *testing.T) {
	t.Parallel()
	for name, args := range map[string][]string{
		"defaults":    nil,
		"minimal":     minimal,
		"all options": {"-f", allOptions},
		"sidecar":     {"-f", sidecarFile},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, stderr, err := runHelm(t, append([]string{"lint", "--strict", chartDir}, args...)...)
			if err != nil {
				t.Fatalf("helm lint --strict: %v\n%s%s", err, out, stderr)
			}
		})
	}
}

func TestRequiredValues(t *testing.T) {
	t.Parallel()
	_, stderr, err := runHelm(t, "template", "qtb", chartDir, "--kube-version", kubeVersion)
	if err == nil {
		t.Fatal("the chart rendered without a tenant, client or session key")
	}
	for _, want := range []string{"config.tenantUrl", "config.clientId", "secrets.clientSecret.existingSecret", "exactly one session key source"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("error does not name %q:\n%s", want, stderr)
		}
	}
}

// TestRefusedValues: inline secrets have nowhere to go, and misconfigurations
// fail at install rather than in a crash-looping pod.
func TestRefusedValues(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"inline client secret":       {[]string{"--set", "secrets.clientSecret.value=s3cret"}, "additional properties 'value' not allowed"},
		"client secret in config":    {[]string{"--set", "config.clientSecret=s3cret"}, "additional properties 'clientSecret' not allowed"},
		"inline redis password":      {[]string{"--set", "redis.password=s3cret"}, "additional properties 'password' not allowed"},
		"password in redis url":      {[]string{"--set", "redis.url=redis://:s3cret@redis:6379"}, "at '/redis/url': 'not' failed"},
		"user password in redis url": {[]string{"--set", "redis.url=rediss://app:s3cret@redis:6379/0"}, "at '/redis/url': 'not' failed"},
		"secret in extraEnv": {[]string{"--set-json", `extraEnv=[{"name":"QTB_CLIENT_SECRET","value":"s3cret"}]`},
			"QTB_CLIENT_SECRET: set by the chart"},
		"key in extraEnv": {[]string{"--set-json", `extraEnv=[{"name":"PARTNER_API_KEY","value":"s3cret"}]`},
			"PARTNER_API_KEY: secrets go in files"},
		"upstream rate in extraEnv": {[]string{"--set-json", `extraEnv=[{"name":"QTB_UPSTREAM_RATE","value":"30"}]`},
			"QTB_UPSTREAM_RATE: set by the chart"},
		"subPath mount": {[]string{"--set-json", `extraVolumeMounts=[{"name":"ca","mountPath":"/etc/ca/ca.pem","subPath":"ca.pem"}]`},
			"subPath"},
		"two session key sources": {[]string{"--set", "config.session.jwksUrl=https://app.example.com/jwks.json"}, "exactly one session key source"},
		"public key twice": {[]string{"--set", "secrets.sessionHmacSecret.existingSecret=", "--set", "secrets.sessionPublicKey.existingSecret=a",
			"--set", "secrets.sessionPublicKey.existingConfigMap=b"}, "not both"},
		"grace period too short": {[]string{"--set", "terminationGracePeriodSeconds=15"}, "must exceed"},
		"wildcard origin":        {[]string{"--set", "config.corsOrigins[0]=https://*.example.com"}, "corsOrigins"},
		"unknown user lookup":    {[]string{"--set", "config.userLookup=mail"}, "userLookup"},
		"email without admin":    {[]string{"--set", "config.userLookup=email"}, "config.userLookup email needs the admin client"},
		"admin id, no secret":    {[]string{"--set", "config.adminClientId=a"}, "go together"},
		"create users, no email": {[]string{"--set", "config.createUsers=true"}, "config.createUsers needs config.userLookup email"},
		"tenants file and tenant url": {[]string{"--set", "tenants.existingConfigMap=qtb-tenants"},
			"replaces config.tenantUrl, config.clientId, secrets.clientSecret.existingSecret"},
		"tenant secrets, no tenants file": {[]string{"--set-json", `tenants.secrets=[{"name":"qtb-acme","mountPath":"/etc/qlik-token-broker/acme"}]`},
			"tenants.secrets needs a tenants file"},
		"several tenants, no claim": {append(slices.Clone(multiTenant), "--set", "config.tenantClaim="), "2 tenants need config.tenantClaim"},
		"tenant secret not mounted": {append(slices.Clone(multiTenant), "--set-json", `tenants.secrets=[{"name":"qtb-acme","mountPath":"/etc/qlik-token-broker/acme"}]`),
			"tenant globex: clientSecretFile /etc/qlik-token-broker/globex/client-secret is in no mounted Secret"},
		"tenant secret over the tenants file": {append(slices.Clone(multiTenant), "--set-json", `tenants.secrets=[{"name":"qtb-acme","mountPath":"/etc/qlik-token-broker/tenants"}]`),
			"overlaps the chart's mount /etc/qlik-token-broker/tenants"},
		"tenant secrets on one path": {append(slices.Clone(multiTenant), "--set-json", `tenants.secrets=[{"name":"a","mountPath":"/etc/qlik-token-broker/acme"},{"name":"b","mountPath":"/etc/qlik-token-broker/acme/b"}]`),
			"overlaps another tenant's"},
		"tenant mountPath with ..": {append(slices.Clone(multiTenant), "--set-json", `tenants.secrets=[{"name":"a","mountPath":"/etc/../acme"}]`), "mountPath"},
		"tenants file not YAML":    {append(slices.Clone(multiTenant), "--set", "tenants.inline=tenants: [a"), "tenants.inline is not YAML"},
		"service key, no audience": {[]string{"--set", "secrets.serviceHmacSecret.existingSecret=svc"}, "config.service.audience is required"},
		"service audience is the session's": {[]string{"--set", "secrets.serviceHmacSecret.existingSecret=svc", "--set", "config.service.audience=app",
			"--set", "config.session.audience=app"}, "must differ from config.session.audience"},
		"two service key sources": {[]string{"--set", "secrets.serviceHmacSecret.existingSecret=svc", "--set", "config.service.jwksUrl=https://jobs.example.com/jwks",
			"--set", "config.service.audience=svc"}, "at most one service key source"},
		"service audience, no key": {[]string{"--set", "config.service.audience=svc"}, "no service key source"},
		"proxy timeout zero":       {[]string{"--set-string", "config.proxy.timeout=0s"}, "config.proxy.timeout (QTB_PROXY_TIMEOUT) must be positive"},
		"negative proxy body":      {[]string{"--set", "config.proxy.maxBody=-1"}, "/config/proxy/maxBody"},
		"otlp endpoint in extraEnv": {[]string{"--set-json", `extraEnv=[{"name":"OTEL_EXPORTER_OTLP_ENDPOINT","value":"http://c:4317"}]`},
			"OTEL_EXPORTER_OTLP_ENDPOINT: set by the chart"},
		"otlp credentials in headers": {[]string{"--set-json", `extraEnv=[{"name":"OTEL_EXPORTER_OTLP_HEADERS","value":"Authorization=Bearer s3cret"}]`},
			"OTEL_EXPORTER_OTLP_HEADERS: credentials in the pod spec"},
		"otlp endpoint with password": {[]string{"--set", "tracing.otlpEndpoint=https://u:s3cret@collector:4318"}, "/tracing/otlpEndpoint"},
		"redis password, no url":      {[]string{"--set", "redis.existingSecret=r"}, "redis.existingSecret needs redis.url"},
		"shared rate, no redis":       {[]string{"--set", "config.upstreamSharedRate=90"}, "config.upstreamSharedRate is counted in Redis"},
		"password in redis url query": {[]string{"--set", "redis.url=redis://sentinel:26379?master_name=m&password=s3cret"},
			"at '/redis/url': 'not' failed"},
		"redis addrs, standalone": {[]string{"--set", "redis.addrs[0]=redis-1:6379"}, "standalone takes redis.url only"},
		"redis mode, no redis":    {[]string{"--set", "redis.mode=cluster"}, "redis.mode cluster needs redis.url or redis.addrs"},
		"sentinel without master": {[]string{"--set", "redis.mode=sentinel", "--set", "redis.addrs[0]=sentinel:26379"}, "redis.masterName"},
		"inline sentinel password": {[]string{"--set", "redis.mode=sentinel", "--set", "redis.addrs[0]=sentinel:26379", "--set", "redis.masterName=m",
			"--set", "redis.sentinelPassword.value=s3cret"}, "additional properties 'value' not allowed"},
		"sentinel password, standalone": {[]string{"--set", "redis.url=redis://redis:6379", "--set", "redis.sentinelPassword.existingSecret=r"},
			"redis.sentinelPassword.existingSecret is for redis.mode sentinel"},
		"sentinel username, cluster": {[]string{"--set", "redis.mode=cluster", "--set", "redis.addrs[0]=redis-0:7000", "--set", "redis.sentinelUsername=qtb"},
			"redis.sentinelUsername is for redis.mode sentinel"},
		"sentinel password, no redis": {[]string{"--set", "redis.sentinelPassword.existingSecret=r"}, "redis.sentinelPassword.existingSecret is for redis.mode sentinel"},
		"sentinel username, no password": {[]string{"--set", "redis.mode=sentinel", "--set", "redis.addrs[0]=sentinel:26379", "--set", "redis.masterName=m",
			"--set", "redis.sentinelUsername=qtb"}, "redis.sentinelUsername needs redis.sentinelPassword.existingSecret"},
		"master name, not sentinel": {[]string{"--set", "redis.url=redis://redis:6379", "--set", "redis.masterName=m"},
			"redis.masterName is for redis.mode sentinel"},
		"redis CA without TLS": {[]string{"--set", "redis.url=redis://redis:6379", "--set", "redis.ca.existingConfigMap=ca"}, "rediss://"},
		"redis CA twice": {[]string{"--set", "redis.url=rediss://redis:6379", "--set", "redis.ca.existingConfigMap=ca",
			"--set", "redis.ca.existingSecret=ca"}, "not both"},
		"l1 off without redis":    {[]string{"--set", "config.l1Enabled=false"}, "config.l1Enabled false needs Redis"},
		"renamed memoryCacheMax":  {[]string{"--set", "config.memoryCacheMax=5000"}, "renamed config.l1MaxEntries"},
		"refresh ahead too late":  {[]string{"--set", "config.minTokenTtl=1h"}, "config.refreshAhead (QTB_REFRESH_AHEAD) must exceed config.minTokenTtl"},
		"min token ttl too long":  {[]string{"--set", "config.minTokenTtl=3h0m1s", "--set", "config.refreshAhead=4h"}, "config.minTokenTtl (QTB_MIN_TOKEN_TTL) must be between 1m and 3h"},
		"token skew too long":     {[]string{"--set", "config.tokenSkew=61m"}, "config.tokenSkew"},
		"l1 ttl zero":             {[]string{"--set-string", "config.l1Ttl=0s"}, "config.l1Ttl"},
		"breaker open too short":  {[]string{"--set", "config.upstreamBreakerOpen=500ms"}, "config.upstreamBreakerOpen (QTB_UPSTREAM_BREAKER_OPEN) must be at least 1s"},
		"too many retries":        {[]string{"--set", "config.upstreamRetries=11"}, "/config/upstreamRetries"},
		"negative upstream rate":  {[]string{"--set", "config.upstreamRate=-1"}, "/config/upstreamRate"},
		"same api and metrics":    {[]string{"--set", "ports.metrics=8080"}, "must differ"},
		"tenants twice":           {[]string{"--set", "tenants.existingConfigMap=a", "--set", "tenants.inline=x: 1"}, "not both"},
		"unknown top-level value": {[]string{"--set", "clientSecret=s3cret"}, "additional properties 'clientSecret' not allowed"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"template", "qtb", chartDir, "--kube-version", kubeVersion}, minimal...)
			_, stderr, err := runHelm(t, append(args, tc.args...)...)
			if err == nil {
				t.Fatalf("rendered with %v", tc.args)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("error does not mention %q:\n%s", tc.want, stderr)
			}
			if strings.Contains(stderr, "s3cret") {
				t.Errorf("the error echoes the secret:\n%s", stderr)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	m := render(t, minimal...)
	if got := m.kinds; !sameKinds(got, "ServiceAccount", "Service", "Deployment", "PodDisruptionBudget") {
		t.Fatalf("kinds %v", got)
	}
	d := m.deployment(t)
	spec := d.Spec.Template.Spec
	checkPod(t, spec)
	c := spec.Containers[0]
	checkContainer(t, c, spec.Volumes, "api")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", d.Spec.Replicas)
	}
	if got := c.Args; !slices.Equal(got, []string{"serve"}) {
		t.Errorf("args %v", got)
	}
	if want := "ghcr.io/qtb-dev/qlik-token-broker:" + chartAppVersion(t); c.Image != want {
		t.Errorf("image %s, want %s", c.Image, want)
	}

	r := c.Resources
	if r.Requests.Cpu().String() != "50m" || r.Requests.Memory().String() != "64Mi" || r.Limits.Memory().String() != "384Mi" {
		t.Errorf("resources %v", r)
	}

	vars := env(c)
	for k, want := range map[string]string{
		"QTB_LISTEN": ":8080", "QTB_METRICS_LISTEN": ":9090", "QTB_SHUTDOWN_TIMEOUT": "15s",
		"QTB_SCOPE": "user_default", "QTB_USER_LOOKUP": "userId", "QTB_LOG_FORMAT": "json",
		"QTB_TOKEN_SKEW": "60s", "QTB_MIN_TOKEN_TTL": "10m", "QTB_REFRESH_AHEAD": "1h", "QTB_L1_TTL": "5m",
		"QTB_L1_MAX_ENTRIES": "100000", "QTB_UPSTREAM_CONCURRENCY": "8",
		"QTB_UPSTREAM_RETRIES": "2", "QTB_UPSTREAM_BREAKER_FAILURES": "5", "QTB_UPSTREAM_BREAKER_OPEN": "30s", "QTB_USER_BURST": "10",
		"QTB_PROXY_TIMEOUT": "5m", "QTB_PROXY_MAX_BODY": "33554432",
	} {
		if vars[k] != want {
			t.Errorf("%s=%q, want %q", k, vars[k], want)
		}
	}
	for _, unset := range []string{"QTB_REDIS_URL", "QTB_REDIS_MODE", "QTB_REDIS_ADDRS", "QTB_REDIS_MASTER_NAME", "QTB_REDIS_CA_FILE",
		"QTB_REDIS_PASSWORD_FILE", "QTB_REDIS_SENTINEL_USERNAME", "QTB_REDIS_SENTINEL_PASSWORD_FILE", "QTB_CORS_ORIGINS", "QTB_CACHE_KEY_FILE", "QTB_TENANTS_FILE", "QTB_SESSION_ALGORITHMS", "QTB_L1_ENABLED",
		"QTB_UPSTREAM_RATE", "QTB_UPSTREAM_BURST", "QTB_USER_RATE", "QTB_TENANT_CLAIM", "QTB_ADMIN_CLIENT_ID", "QTB_ADMIN_CLIENT_SECRET_FILE",
		"QTB_CREATE_USERS", "QTB_SERVICE_HMAC_SECRET_FILE", "QTB_SERVICE_PUBLIC_KEY_FILE", "QTB_SERVICE_JWKS_URL", "QTB_SERVICE_ISSUER",
		"QTB_SERVICE_AUDIENCE", "QTB_SERVICE_TENANTS_CLAIM", "QTB_PROXY_WEBSOCKET", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"} {
		if _, ok := vars[unset]; ok {
			t.Errorf("%s is set by default", unset)
		}
	}
	checkGracePeriod(t, spec, c)

	// Soft spread across zones and hosts.
	if len(spec.TopologySpreadConstraints) != 2 {
		t.Fatalf("topologySpreadConstraints %+v", spec.TopologySpreadConstraints)
	}
	for i, key := range []string{"topology.kubernetes.io/zone", "kubernetes.io/hostname"} {
		tsc := spec.TopologySpreadConstraints[i]
		if tsc.TopologyKey != key || tsc.WhenUnsatisfiable != corev1.ScheduleAnyway || tsc.LabelSelector == nil ||
			!subset(tsc.LabelSelector.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("topologySpreadConstraints[%d] = %+v", i, tsc)
		}
	}

	sa := m.serviceAccounts[0]
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("ServiceAccount: automountServiceAccountToken must be false")
	}
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("pod uses ServiceAccount %q, chart created %q", spec.ServiceAccountName, sa.Name)
	}
	checkService(t, m.services[0], d, 8080, 9090)
	checkPDB(t, m.pdbs[0], d)

	if _, ok := d.Spec.Template.Annotations["checksum/config"]; !ok {
		t.Error("no checksum/config annotation on the pod")
	}
	for _, labels := range []map[string]string{d.Labels, d.Spec.Template.Labels, m.services[0].Labels} {
		for _, k := range []string{"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"} {
			if labels[k] == "" {
				t.Errorf("label %s missing in %v", k, labels)
			}
		}
	}
}

func TestPodDisruptionBudget(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		want int
	}{
		"one replica":           {[]string{"--set", "replicaCount=1"}, 0},
		"one replica, enabled":  {[]string{"--set", "replicaCount=1", "--set", "pdb.enabled=true"}, 1},
		"two replicas":          {[]string{"--set", "replicaCount=2"}, 1},
		"autoscaled from one":   {[]string{"--set", "replicaCount=5", "--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=1"}, 0},
		"autoscaled from three": {[]string{"--set", "replicaCount=1", "--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=3"}, 1},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := render(t, append(slices.Clone(minimal), tc.args...)...)
			if got := m.count("PodDisruptionBudget"); got != tc.want {
				t.Errorf("%d PodDisruptionBudgets, want %d", got, tc.want)
			}
		})
	}
}

func TestTopologySpread(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		want []string // topology keys
	}{
		"custom": {[]string{"--set-json", `topologySpreadConstraints=[{"maxSkew":2,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"a":"b"}}}]`},
			[]string{"kubernetes.io/hostname"}},
		"off": {[]string{"--set", "defaultTopologySpread=false"}, nil},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var got []string
			for _, c := range render(t, append(slices.Clone(minimal), tc.args...)...).deployment(t).Spec.Template.Spec.TopologySpreadConstraints {
				got = append(got, c.TopologyKey)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("topology keys %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRedisTopologies: standalone, Cluster and Sentinel reach the broker's
// QTB_REDIS_* variables, a private CA arrives as a file, and the
// NetworkPolicy opens every Redis port the broker was given.
func TestRedisTopologies(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args    []string
		env     map[string]string // "" means unset
		ports   []string          // Redis egress ports
		secrets map[string]string // *_FILE variable -> "Secret/key" its file projects
	}{
		"standalone": {
			[]string{"--set", "redis.url=redis://redis.redis.svc"},
			map[string]string{"QTB_REDIS_URL": "redis://redis.redis.svc", "QTB_REDIS_MODE": "standalone", "QTB_REDIS_ADDRS": "", "QTB_REDIS_CA_FILE": ""},
			[]string{"6379"},
			nil,
		},
		"cluster, seed nodes only": {
			[]string{"--set", "redis.mode=cluster", "--set", "redis.addrs={redis-0.redis:7000,redis-1.redis:7001}"},
			map[string]string{"QTB_REDIS_URL": "", "QTB_REDIS_MODE": "cluster", "QTB_REDIS_ADDRS": "redis-0.redis:7000,redis-1.redis:7001"},
			[]string{"7000", "7001"},
			nil,
		},
		"cluster, seeds in the url": {
			[]string{"--set", "redis.mode=cluster", "--set", "redis.url=redis://redis-0.redis:7000?addr=redis-1.redis:7001&addr=redis-2.redis:7002"},
			map[string]string{"QTB_REDIS_MODE": "cluster", "QTB_REDIS_ADDRS": ""},
			[]string{"7000", "7001", "7002"},
			nil,
		},
		"sentinel, CA from a Secret": {
			[]string{"--set", "redis.mode=sentinel", "--set", "redis.url=rediss://sentinel.redis:26379?master_name=tokens",
				"--set", "redis.ca.existingSecret=redis-ca", "--set", "redis.existingSecret=redis-auth"},
			map[string]string{"QTB_REDIS_MODE": "sentinel", "QTB_REDIS_MASTER_NAME": "",
				"QTB_REDIS_CA_FILE":                "/var/run/secrets/qlik-token-broker/redis-ca/ca.pem",
				"QTB_REDIS_SENTINEL_USERNAME":      "",
				"QTB_REDIS_SENTINEL_PASSWORD_FILE": ""},
			[]string{"26379", "6379"},
			map[string]string{"QTB_REDIS_PASSWORD_FILE": "redis-auth/redis-password", "QTB_REDIS_CA_FILE": "redis-ca/ca.crt"},
		},
		"sentinel with a password of its own": {
			[]string{"--set", "redis.mode=sentinel", "--set", "redis.addrs={sentinel-0.redis:26379,sentinel-1.redis:26379}", "--set", "redis.masterName=tokens",
				"--set", "redis.existingSecret=redis-auth", "--set", "redis.sentinelUsername=qtb",
				"--set", "redis.sentinelPassword.existingSecret=redis-auth", "--set", "redis.sentinelPassword.key=sentinel-password"},
			map[string]string{"QTB_REDIS_MODE": "sentinel", "QTB_REDIS_SENTINEL_USERNAME": "qtb",
				"QTB_REDIS_PASSWORD_FILE":          "/var/run/secrets/qlik-token-broker/redis/password",
				"QTB_REDIS_SENTINEL_PASSWORD_FILE": "/var/run/secrets/qlik-token-broker/redis-sentinel/password"},
			[]string{"26379", "6379"},
			// One Secret may hold both passwords, under two keys.
			map[string]string{"QTB_REDIS_PASSWORD_FILE": "redis-auth/redis-password", "QTB_REDIS_SENTINEL_PASSWORD_FILE": "redis-auth/sentinel-password"},
		},
		"ports overridden": {
			[]string{"--set", "redis.mode=sentinel", "--set", "redis.addrs={sentinel.redis:26379}", "--set", "redis.masterName=tokens",
				"--set", "networkPolicy.redisPorts={26379,6380}"},
			map[string]string{"QTB_REDIS_MASTER_NAME": "tokens", "QTB_REDIS_ADDRS": "sentinel.redis:26379"},
			[]string{"26379", "6380"},
			nil,
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := render(t, append(slices.Clone(minimal), append([]string{"--set", "networkPolicy.enabled=true"}, tc.args...)...)...)
			spec := m.deployment(t).Spec.Template.Spec
			c := spec.Containers[0]
			checkContainer(t, c, spec.Volumes, "api")
			vars := env(c)
			for k, want := range tc.env {
				got, ok := vars[k]
				if want == "" && ok {
					t.Errorf("%s=%q, want it unset", k, got)
				} else if want != "" && got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			var ports []string
			for _, r := range m.netpols[0].Spec.Egress {
				for _, p := range r.Ports {
					if p := p.Port.String(); p != "53" && p != "443" {
						ports = append(ports, p)
					}
				}
			}
			if !slices.Equal(ports, tc.ports) {
				t.Errorf("Redis egress ports %v, want %v", ports, tc.ports)
			}
			for k, want := range tc.secrets {
				if got := projectedFrom(c, spec.Volumes, vars[k]); got != want {
					t.Errorf("%s=%s reads %q, want %s", k, vars[k], got, want)
				}
			}
		})
	}
}

// projectedFrom returns "Secret/key" (or "ConfigMap/key") of the volume
// item that puts file where the container sees it, or "".
func projectedFrom(c corev1.Container, volumes []corev1.Volume, file string) string {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != path.Dir(file) {
			continue
		}
		for _, v := range volumes {
			if v.Name != vm.Name {
				continue
			}
			name, items := "", []corev1.KeyToPath(nil)
			switch {
			case v.Secret != nil:
				name, items = v.Secret.SecretName, v.Secret.Items
			case v.ConfigMap != nil:
				name, items = v.ConfigMap.Name, v.ConfigMap.Items
			}
			for _, it := range items {
				if it.Path == path.Base(file) {
					return name + "/" + it.Key
				}
			}
		}
	}
	return ""
}

func TestAllOptions(t *testing.T) {
	t.Parallel()
	secretArgs, secretNames := multiTenantSentinels(t)
	m := render(t, append([]string{"-f", allOptions, "--api-versions", monitoring}, secretArgs...)...)
	if !sameKinds(m.kinds, "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount", "ConfigMap", "ConfigMap",
		"Service", "Deployment", "HorizontalPodAutoscaler", "PrometheusRule", "ServiceMonitor") {
		t.Fatalf("kinds %v", m.kinds)
	}
	d := m.deployment(t)
	spec := d.Spec.Template.Spec
	checkPod(t, spec)
	c := spec.Containers[0]
	checkContainer(t, c, spec.Volumes, "api")
	checkGracePeriod(t, spec, c)
	checkSentinels(t, m, secretNames...)

	if d.Spec.Replicas != nil {
		t.Errorf("replicas %d set although the HorizontalPodAutoscaler owns them", *d.Spec.Replicas)
	}
	hpa := m.hpas[0]
	if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != d.Name ||
		*hpa.Spec.MinReplicas != 3 || hpa.Spec.MaxReplicas != 12 {
		t.Errorf("HorizontalPodAutoscaler spec %+v", hpa.Spec)
	}
	checkService(t, m.services[0], d, 8081, 9091)
	checkPDB(t, m.pdbs[0], d)

	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds != 5 {
		t.Errorf("preStop %+v, want a 5s sleep", c.Lifecycle)
	}
	if !strings.Contains(c.Image, "@sha256:") {
		t.Errorf("image %s: the digest should win over the tag", c.Image)
	}

	vars := env(c)
	for k, want := range map[string]string{
		"QTB_SESSION_ALGORITHMS": "HS256,HS512",
		"QTB_CORS_ORIGINS":       "https://app.example.com,https://admin.example.com:8443",
		"QTB_REDIS_URL":          "rediss://default@redis-sentinel.redis.svc.cluster.local:26380/2",
		"QTB_REDIS_MODE":         "sentinel",
		"QTB_REDIS_ADDRS":        "redis-sentinel-1.redis.svc.cluster.local:26380,redis-sentinel-2.redis.svc.cluster.local:26380",
		"QTB_REDIS_MASTER_NAME":  "tokens",
		"QTB_REDIS_CA_FILE":      "/etc/qlik-token-broker/redis-ca/ca.pem",
		// The sentinels' own credentials.
		"QTB_REDIS_SENTINEL_USERNAME":      "qtb-sentinel",
		"QTB_REDIS_SENTINEL_PASSWORD_FILE": "/var/run/secrets/qlik-token-broker/redis-sentinel/password",
		"QTB_MIN_TOKEN_TTL":                "15m",
		"QTB_REFRESH_AHEAD":                "90m",
		"QTB_L1_TTL":                       "2m",
		"QTB_L1_ENABLED":                   "false",
		"QTB_L1_MAX_ENTRIES":               "50000",
		"QTB_SHUTDOWN_TIMEOUT":             "20s",
		"SSL_CERT_DIR":                     "/etc/ssl/certs:/etc/qlik-token-broker/ca",
		// 0 retries means none, so it is rendered; rates keep decimals.
		"QTB_UPSTREAM_CONCURRENCY":      "12",
		"QTB_UPSTREAM_RATE":             "7.5",
		"QTB_UPSTREAM_BURST":            "4",
		"QTB_UPSTREAM_SHARED_RATE":      "85.5",
		"QTB_UPSTREAM_SHARED_BURST":     "8",
		"QTB_UPSTREAM_RETRIES":          "0",
		"QTB_UPSTREAM_BREAKER_FAILURES": "3",
		"QTB_UPSTREAM_BREAKER_OPEN":     "45s",
		"QTB_USER_RATE":                 "20",
		"QTB_USER_BURST":                "5",
		// Many tenants, service credentials, the proxy and tracing.
		"QTB_TENANTS_FILE":              "/etc/qlik-token-broker/tenants/tenants.yaml",
		"QTB_TENANT_CLAIM":              "qlik_tenant",
		"QTB_SERVICE_HMAC_SECRET_FILE":  "/var/run/secrets/qlik-token-broker/service-hmac/hmac-secret",
		"QTB_SERVICE_ISSUER":            "https://jobs.example.com",
		"QTB_SERVICE_AUDIENCE":          "qlik-token-broker-service",
		"QTB_SERVICE_TENANTS_CLAIM":     "qlik_tenants",
		"QTB_PROXY_TIMEOUT":             "10m",
		"QTB_PROXY_MAX_BODY":            "67108864",
		"QTB_PROXY_WEBSOCKET":           "true",
		"OTEL_EXPORTER_OTLP_ENDPOINT":   "http://otel-collector.monitoring.svc:4318",
		"OTEL_SERVICE_NAME":             "acme-token-broker",
		"OTEL_EXPORTER_OTLP_CLIENT_KEY": "/etc/qlik-token-broker/otlp-client/tls.key",
	} {
		if vars[k] != want {
			t.Errorf("%s=%q, want %q", k, vars[k], want)
		}
	}
	// The tenants file replaces the single-tenant settings: the broker
	// refuses both.
	for _, unset := range []string{"QTB_TENANT_URL", "QTB_CLIENT_ID", "QTB_CLIENT_SECRET_FILE", "QTB_ADMIN_CLIENT_ID",
		"QTB_ADMIN_CLIENT_SECRET_FILE", "QTB_CREATE_USERS"} {
		if _, ok := vars[unset]; ok {
			t.Errorf("%s is set beside a tenants file", unset)
		}
	}

	tenants, ok := m.configMaps["acme-token-broker-tenants"]
	if !ok || !strings.Contains(tenants.Data["tenants.yaml"], "id: acme") {
		t.Fatalf("tenants ConfigMap %+v", tenants)
	}
	checkTenantFiles(t, tenants.Data["tenants.yaml"], c, spec.Volumes)

	np := m.netpols[0]
	if !subset(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("NetworkPolicy selects %v", np.Spec.PodSelector.MatchLabels)
	}
	ingress := map[string]bool{}
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			ingress[p.Port.String()] = len(r.From) > 0
		}
	}
	if !ingress["api"] || !ingress["metrics"] {
		t.Errorf("ingress %v: want api and metrics, each from listed peers", ingress)
	}
	egress := map[string]bool{}
	for _, r := range np.Spec.Egress {
		for _, p := range r.Ports {
			egress[fmt.Sprintf("%s/%s", *p.Protocol, p.Port.String())] = true
		}
	}
	// The sentinels' port, and 6379 for the master they report.
	// And the OTLP collector's port.
	for _, want := range []string{"UDP/53", "TCP/53", "TCP/26380", "TCP/6379", "TCP/443", "TCP/4318"} {
		if !egress[want] {
			t.Errorf("egress %v lacks %s", egress, want)
		}
	}

	sm := m.serviceMonitors[0]
	ep := dig(sm, "spec", "endpoints").([]any)[0].(map[string]any)
	if ep["port"] != "metrics" || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %v", ep)
	}
	if sel := dig(sm, "spec", "selector", "matchLabels").(map[string]any); !subsetAny(sel, m.services[0].Labels) {
		t.Errorf("ServiceMonitor selects %v, Service labels %v", sel, m.services[0].Labels)
	}
	checkRules(t, m.prometheusRules[0], "QlikTokenBrokerUpstreamFailureRatioHigh",
		"QlikTokenBrokerInvalidClientCredentials", "QlikTokenBrokerUpstreamBreakerOpen",
		"QlikTokenBrokerUpstreamCooldownRepeated", "QlikTokenBrokerSessionRejectionsHigh",
		"QlikTokenBrokerRedisDegraded", "QlikTokenBrokerCacheUnsealFailures", "QlikTokenBrokerDown")
	for _, g := range dig(m.prometheusRules[0], "spec", "groups").([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			r := r.(map[string]any)
			if r["alert"] == "QlikTokenBrokerUpstreamCooldownRepeated" && !strings.Contains(fmt.Sprint(r["expr"]), ">= 5") {
				t.Errorf("metrics.prometheusRule.upstreamCooldownMinutes 5 did not reach the alert: %s", r["expr"])
			}
		}
	}

	dash, ok := m.configMaps["acme-token-broker-dashboard"]
	if !ok {
		t.Fatal("no dashboard ConfigMap")
	}
	checkDashboardConfigMap(t, dash, "monitoring")
}

// TestTenants: a tenants file (inline as text or as a mapping, or an
// existing ConfigMap) replaces the single-tenant settings, and each tenant's
// Secret is mounted whole where the file points.
func TestTenants(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args      []string
		configMap string // tenants ConfigMap the pod mounts
		rendered  bool   // whether the chart renders it
	}{
		"inline text": {nil, "qtb-qlik-token-broker-tenants", true},
		// The later --set-json replaces multiTenant's text.
		"inline mapping": {[]string{"--set-json",
			`tenants.inline={"tenants":[{"id":"acme","url":"https://acme.eu.qlikcloud.com","clientId":"a","clientSecretFile":"/etc/qlik-token-broker/acme/client-secret"}]}`},
			"qtb-qlik-token-broker-tenants", true},
		"existing ConfigMap": {[]string{"--set", "tenants.inline=", "--set", "tenants.existingConfigMap=qtb-tenants"}, "qtb-tenants", false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := render(t, append(append(slices.Clone(minimal), multiTenant...), tc.args...)...)
			spec := m.deployment(t).Spec.Template.Spec
			c := spec.Containers[0]
			checkContainer(t, c, spec.Volumes, "api")
			vars := env(c)
			if vars["QTB_TENANTS_FILE"] != "/etc/qlik-token-broker/tenants/tenants.yaml" || vars["QTB_TENANT_CLAIM"] != "tenant" {
				t.Errorf("QTB_TENANTS_FILE=%q QTB_TENANT_CLAIM=%q", vars["QTB_TENANTS_FILE"], vars["QTB_TENANT_CLAIM"])
			}
			for _, unset := range []string{"QTB_TENANT_URL", "QTB_CLIENT_ID", "QTB_CLIENT_SECRET_FILE"} {
				if _, ok := vars[unset]; ok {
					t.Errorf("%s is set beside a tenants file", unset)
				}
			}
			secrets := map[string]string{} // mount path -> Secret
			for _, v := range spec.Volumes {
				if v.Name == "qtb-tenants" && (v.ConfigMap == nil || v.ConfigMap.Name != tc.configMap) {
					t.Errorf("tenants volume %+v, want ConfigMap %s", v.VolumeSource, tc.configMap)
				}
				if v.Secret != nil && strings.HasPrefix(v.Name, "qtb-tenant-") {
					for _, vm := range c.VolumeMounts {
						if vm.Name == v.Name {
							secrets[vm.MountPath] = v.Secret.SecretName
						}
					}
				}
			}
			// The trailing slash of globex's mountPath is cleaned away.
			if want := map[string]string{"/etc/qlik-token-broker/acme": "qtb-acme", "/etc/qlik-token-broker/globex": "qtb-globex"}; !maps.Equal(secrets, want) {
				t.Errorf("tenant Secrets mounted %v, want %v", secrets, want)
			}
			cm, ok := m.configMaps[tc.configMap]
			if ok != tc.rendered {
				t.Fatalf("tenants ConfigMap %s rendered: %v, want %v", tc.configMap, ok, tc.rendered)
			}
			if ok {
				checkTenantFiles(t, cm.Data["tenants.yaml"], c, spec.Volumes)
			}
		})
	}
}

func TestMonitoringNeedsOperatorAPI(t *testing.T) {
	t.Parallel()
	m := render(t, "-f", allOptions)
	if n := m.count("ServiceMonitor") + m.count("PrometheusRule"); n != 0 {
		t.Errorf("%d Prometheus Operator objects rendered without the monitoring.coreos.com/v1 API", n)
	}
	if _, ok := m.configMaps["acme-token-broker-dashboard"]; !ok {
		t.Error("the dashboard needs no operator, yet is missing")
	}
}

func TestChecksumFollowsConfig(t *testing.T) {
	t.Parallel()
	checksum := func(args ...string) string {
		return render(t, append(slices.Clone(minimal), args...)...).deployment(t).Spec.Template.Annotations["checksum/config"]
	}
	base := checksum()
	if again := checksum(); again != base {
		t.Errorf("the same values gave checksums %s and %s", base, again)
	}
	for _, args := range [][]string{
		{"--set", "config.logLevel=debug"},
		{"--set", "config.proxy.timeout=1m"},
		{"--set", "tracing.otlpEndpoint=http://collector:4317"},
		{"--set", "secrets.clientSecret.key=other"},
	} {
		if got := checksum(args...); got == base {
			t.Errorf("%v did not change the checksum", args)
		}
	}
}

// TestEverySettingReachable: each variable `serve` reads (config.go,
// settings()) can be set from values; a secret only as its *_FILE form.
func TestEverySettingReachable(t *testing.T) {
	t.Parallel()
	settings := serveSettings(t)
	if len(settings) < 20 {
		t.Fatalf("found only %d settings in ../config.go: %v", len(settings), settings)
	}
	isSetting := map[string]bool{}
	for _, s := range settings {
		isSetting[s] = true
	}
	set := map[string]bool{}
	for _, args := range [][]string{
		{"-f", allOptions},
		{"-f", allOptions, "--set", "secrets.sessionHmacSecret.existingSecret=", "--set", "config.session.jwksUrl=https://app.example.com/jwks.json",
			"--set", "secrets.serviceHmacSecret.existingSecret=", "--set", "secrets.servicePublicKey.existingSecret=service-key"},
		append([]string{"-f", allOptions, "--set", "secrets.sessionHmacSecret.existingSecret=", "--set", "secrets.sessionPublicKey.existingSecret=session-key",
			"--set", "secrets.serviceHmacSecret.existingSecret=", "--set", "config.service.jwksUrl=https://jobs.example.com/jwks.json"}, singleTenant...),
	} {
		c := render(t, args...).deployment(t).Spec.Template.Spec.Containers[0]
		for _, e := range c.Env {
			if !strings.HasPrefix(e.Name, "QTB_") {
				continue
			}
			set[e.Name] = true
			if !isSetting[e.Name] && !slices.Contains(pendingSettings, e.Name) {
				t.Errorf("the chart sets %s, which the broker does not read (a typo?)", e.Name)
			}
		}
	}
	for _, s := range settings {
		switch {
		case isSetting[s+"_FILE"]:
			if set[s] {
				t.Errorf("%s is set as a literal: secrets must come as %s_FILE", s, s)
			}
			if !set[s+"_FILE"] {
				t.Errorf("%s_FILE cannot be set from values", s)
			}
		case !set[s]:
			t.Errorf("%s cannot be set from values", s)
		}
	}
	for _, p := range pendingSettings {
		if isSetting[p] {
			t.Logf("%s now exists in config.go; drop it from pendingSettings", p)
		}
	}
}

// serveSettings reads the variable names listed in settings() in ../config.go.
func serveSettings(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", "config.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "settings" {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			cl, ok := n.(*ast.CompositeLit)
			if !ok || len(cl.Elts) == 0 {
				return true
			}
			if lit, ok := cl.Elts[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && strings.HasPrefix(s, "QTB_") {
					names = append(names, s)
				}
			}
			return true
		})
	}
	if names == nil {
		t.Fatal("no settings() with QTB_* entries in ../config.go")
	}
	return names
}

func TestSidecar(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args   []string
		native bool
	}{
		"native":    {nil, true},
		"container": {[]string{"--set", "sidecar.native=false"}, false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			secretArgs, secretNames := sentinelArgs("secrets.clientSecret.existingSecret", "secrets.adminClientSecret.existingSecret", "redis.existingSecret")
			args := append(append([]string{"-f", sidecarFile, "--api-versions", monitoring}, secretArgs...), tc.args...)
			m := render(t, args...)
			if !sameKinds(m.kinds, "ConfigMap", "ConfigMap", "PrometheusRule") {
				t.Fatalf("kinds %v: sidecar mode renders the block, the dashboard and the rules only", m.kinds)
			}
			cm, ok := m.configMaps["qtb-qlik-token-broker-sidecar"]
			if !ok {
				t.Fatalf("no sidecar ConfigMap in %v", m.configMaps)
			}
			key := "containers.yaml"
			if tc.native {
				key = "initContainers.yaml"
			}
			var containers []corev1.Container
			if err := yaml.UnmarshalStrict([]byte(cm.Data[key]), &containers); err != nil {
				t.Fatalf("%s: %v\n%s", key, err, cm.Data[key])
			}
			var volumes []corev1.Volume
			if err := yaml.UnmarshalStrict([]byte(cm.Data["volumes.yaml"]), &volumes); err != nil {
				t.Fatalf("volumes.yaml: %v\n%s", err, cm.Data["volumes.yaml"])
			}
			if len(containers) != 1 {
				t.Fatalf("%d containers", len(containers))
			}
			c := containers[0]
			checkContainer(t, c, volumes, "qtb-api")
			checkSentinels(t, m, secretNames...)
			native := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
			if native != tc.native {
				t.Errorf("restartPolicy %v, native=%v", c.RestartPolicy, tc.native)
			}
			if c.Name != "token-broker" || env(c)["QTB_LISTEN"] != ":8181" {
				t.Errorf("container %s listening on %s", c.Name, env(c)["QTB_LISTEN"])
			}
			for k, want := range map[string]string{
				"QTB_USER_LOOKUP": "email", "QTB_ADMIN_CLIENT_ID": "4567ef0123abcd4567ef0123abcd4567", "QTB_CREATE_USERS": "true",
				"QTB_SERVICE_PUBLIC_KEY_FILE": "/etc/qlik-token-broker/service-public-key/public-key.pem",
				"QTB_SERVICE_AUDIENCE":        "qlik-token-broker-service", "QTB_PROXY_WEBSOCKET": "true",
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318", "OTEL_SERVICE_NAME": "qlik-token-broker",
			} {
				if got := env(c)[k]; got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			for _, v := range volumes {
				if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o004 == 0) {
					t.Errorf("volume %s: without the chart's fsGroup, uid %d needs the file world-readable", v.Name, brokerUID)
				}
			}
			checkDashboardConfigMap(t, m.configMaps["qtb-qlik-token-broker-dashboard"], namespace)
		})
	}
}

// TestSidecarFromParentChart: an OEM chart that vendors this one renders the
// broker into its own pod with the named templates.
func TestSidecarFromParentChart(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	if err := os.CopyFS(filepath.Join(parent, "charts", chartDir), os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"Chart.yaml": `apiVersion: v2
name: oem-app
version: 1.0.0
dependencies:
  - name: qlik-token-broker
    version: 0.1.0
`,
		"values.yaml": `qlik-token-broker:
  mode: sidecar
  ports: {api: 8181, metrics: 9191}
  config:
    tenantUrl: https://acme.us.qlikcloud.com
    clientId: client-id
    session: {jwksUrl: "https://app.example.com/.well-known/jwks.json"}
  secrets:
    clientSecret: {existingSecret: qtb-client}
`,
		"templates/deployment.yaml": `{{- $qtb := index .Subcharts "qlik-token-broker" }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: oem-app
spec:
  selector: {matchLabels: {app: oem-app}}
  template:
    metadata: {labels: {app: oem-app}}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        fsGroup: 65532
        seccompProfile: {type: RuntimeDefault}
      initContainers:
        - {{ include "qlik-token-broker.sidecarContainer" $qtb | indent 10 | trim }}
      containers:
        - name: app
          image: registry.example.com/oem-app:1.0.0
      volumes:
        {{- include "qlik-token-broker.sidecarVolumes" $qtb | nindent 8 }}
`,
	}
	for name, body := range files {
		p := filepath.Join(parent, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := renderChart(t, parent)
	var oem *appsv1.Deployment
	for _, d := range m.deployments {
		if d.Name == "oem-app" {
			oem = d
		}
	}
	if oem == nil || len(m.deployments) != 1 {
		t.Fatalf("deployments %v: want only the OEM app's", m.kinds)
	}
	spec := oem.Spec.Template.Spec
	checkPod(t, spec)
	if len(spec.InitContainers) != 1 {
		t.Fatalf("initContainers %+v", spec.InitContainers)
	}
	c := spec.InitContainers[0]
	checkContainer(t, c, spec.Volumes, "qtb-api")
	if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("the vendored sidecar is not a native sidecar")
	}
	appVersion := chartAppVersion(t)
	if !strings.HasSuffix(c.Image, ":"+appVersion) {
		t.Errorf("image %s: want the vendored chart's appVersion %s", c.Image, appVersion)
	}
	if got := env(c)["QTB_SESSION_JWKS_URL"]; got != "https://app.example.com/.well-known/jwks.json" {
		t.Errorf("QTB_SESSION_JWKS_URL=%q: the parent's values did not reach the subchart", got)
	}
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

func TestDashboard(t *testing.T) {
	t.Parallel()
	names, err := DashboardMetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !slices.Contains(knownMetrics, n) {
			t.Errorf("the dashboard queries %s, which the broker does not export", n)
		}
	}
	for _, want := range []string{
		"qlik_token_broker_http_requests_total",
		"qlik_token_broker_http_request_duration_seconds_bucket",
		"qlik_token_broker_cache_lookups_total",
		"qlik_token_broker_upstream_requests_total",
		"qlik_token_broker_upstream_request_duration_seconds_bucket",
		"qlik_token_broker_session_rejections_total",
		"qlik_token_broker_http_origin_rejections_total",
		"qlik_token_broker_token_coalesced_requests_total",
		"qlik_token_broker_token_refreshes_total",
		"qlik_token_broker_token_leases_total",
		"qlik_token_broker_cache_unseal_failures_total",
		"qlik_token_broker_redis_errors_total",
		"qlik_token_broker_redis_degraded",
		"qlik_token_broker_token_rejections_total",
		"qlik_token_broker_upstream_breaker_state",
		"qlik_token_broker_upstream_cooldown_until_timestamp_seconds",
		"qlik_token_broker_upstream_invalid_credentials_total",
		"qlik_token_broker_upstream_queue_wait_seconds_bucket",
		"qlik_token_broker_upstream_retries_total",
		"qlik_token_broker_proxy_requests_total",
		"qlik_token_broker_proxy_request_duration_seconds_bucket",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("no panel shows %s", want)
		}
	}

	raw, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID          int    `json:"id"`
			Title       string `json:"title"`
			Description string `json:"description"`
			Datasource  struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" {
		t.Error("the dashboard has no uid: Grafana would duplicate it on every reload")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %q, want the ${datasource} variable", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q: unbalanced query %s", p.Title, tg.Expr)
			}
			if strings.Contains(tg.Expr, "memory") {
				t.Errorf("panel %q queries %s: the memory cache tier is now l1", p.Title, tg.Expr)
			}
		}
		if strings.Contains(p.Description, "memory") {
			t.Errorf("panel %q: description %q names the memory tier, now l1", p.Title, p.Description)
		}
	}
}

func checkDashboardConfigMap(t *testing.T, cm *corev1.ConfigMap, ns string) {
	t.Helper()
	if cm == nil {
		t.Fatal("no dashboard ConfigMap")
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v: Grafana's sidecar looks for grafana_dashboard: \"1\"", cm.Labels)
	}
	if cm.Namespace != ns {
		t.Errorf("dashboard ConfigMap in %s, want %s", cm.Namespace, ns)
	}
	want, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	got := cm.Data["qlik-token-broker.json"]
	if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
		t.Errorf("the ConfigMap does not hold %s (got %d bytes)", dashboard, len(got))
	}
}

func checkRules(t *testing.T, rule map[string]any, alerts ...string) {
	t.Helper()
	var got []string
	for _, g := range dig(rule, "spec", "groups").([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			r := r.(map[string]any)
			got = append(got, fmt.Sprint(r["alert"]))
			expr := fmt.Sprint(r["expr"])
			for _, n := range metricNames(expr) {
				if !slices.Contains(knownMetrics, n) {
					t.Errorf("alert %s queries %s, which the broker does not export", r["alert"], n)
				}
			}
			if strings.Contains(expr, "qlik_token_broker_") && !strings.Contains(expr, `namespace="`+namespace+`"`) {
				t.Errorf("alert %s is not scoped to the release namespace: %s", r["alert"], expr)
			}
		}
	}
	if !slices.Equal(got, alerts) {
		t.Errorf("alerts %v, want %v", got, alerts)
	}
}

func checkGracePeriod(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	drain, err := time.ParseDuration(env(c)["QTB_SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Fatalf("QTB_SHUTDOWN_TIMEOUT: %v", err)
	}
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		drain += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	if spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	if grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second; grace <= drain {
		t.Errorf("terminationGracePeriodSeconds %s does not outlast the preStop sleep and QTB_SHUTDOWN_TIMEOUT (%s)", grace, drain)
	}
}

func checkService(t *testing.T, s *corev1.Service, d *appsv1.Deployment, api, metricsPort int32) {
	t.Helper()
	if !subset(s.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("Service selects %v, pods are labelled %v", s.Spec.Selector, d.Spec.Template.Labels)
	}
	ports := map[string]corev1.ServicePort{}
	for _, p := range s.Spec.Ports {
		ports[p.Name] = p
	}
	if p := ports["api"]; p.Port != api || p.TargetPort.String() != "api" {
		t.Errorf("Service port api: %+v", p)
	}
	if p := ports["metrics"]; p.Port != metricsPort || p.TargetPort.String() != "metrics" {
		t.Errorf("Service port metrics: %+v", p)
	}
}

func checkPDB(t *testing.T, p *policyv1.PodDisruptionBudget, d *appsv1.Deployment) {
	t.Helper()
	if p.Spec.Selector == nil || !subset(p.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget selects %v", p.Spec.Selector)
	}
	if p.Spec.MaxUnavailable == nil && p.Spec.MinAvailable == nil {
		t.Error("PodDisruptionBudget sets neither maxUnavailable nor minAvailable")
	}
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
