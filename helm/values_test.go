package helm_test

// The values schema and the chart's own checks: what it requires, what it
// refuses at install time, and helm lint.

import (
	"slices"
	"strings"
	"testing"
)

// minimal is the smallest configuration the chart accepts.
var minimal = []string{
	"--set", "config.tenantUrl=https://acme.eu.qlikcloud.com",
	"--set", "config.clientId=client-id",
	"--set", "secrets.clientSecret.existingSecret=qtb-client",
	"--set", "secrets.sessionHmacSecret.existingSecret=qtb-session",
}

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
		"password in redis url":      {[]string{"--set", "redis.url=redis://:s3cret@redis:6379"}, "redis.url holds a password"},
		"user password in redis url": {[]string{"--set", "redis.url=rediss://app:s3cret@redis:6379/0"}, "redis.url holds a password"},
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
			"redis.url holds a password"},
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
