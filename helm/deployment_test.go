package helm_test

// The standalone Deployment and what comes with it: defaults, replicas and
// disruption budget, spread, the all-options rendering, the config checksum.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
)

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
		"OTEL_EXPORTER_OTLP_ENDPOINT":   "https://otel-collector.monitoring.svc:4318",
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
