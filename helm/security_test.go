package helm_test

// Pod Security "restricted" and secrets: secrets reach the broker only as
// files projected from existing Secrets, mounted whole and read-only, and
// their names appear nowhere else.

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

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
