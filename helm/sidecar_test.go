package helm_test

// Sidecar mode: the chart renders the broker container for the OEM app's
// own pod, directly or from a parent chart that vendors this one.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

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
