{{/*
The broker's container, its file mounts and volumes: one definition shared
by the Deployment (standalone) and the sidecar block (sidecar mode, or an OEM
chart's include). Takes a chart context; see _helpers.tpl.
*/}}

{{- define "qlik-token-broker.secretDir" -}}/var/run/secrets/qlik-token-broker{{- end }}

{{/*
fileMounts lists every file the broker reads, as JSON: the *_FILE variable
naming it, the volume projecting exactly one key of an existing Secret or a
ConfigMap into a directory, and the file name in it. Whole-directory mounts,
never subPath, so kubelet's atomic updates reach the file.
*/}}
{{- define "qlik-token-broker.fileMounts" -}}
{{- $dir := include "qlik-token-broker.secretDir" . }}
{{- $s := .Values.secrets }}
{{- $m := list }}
{{- with $s.clientSecret.existingSecret }}
{{- $m = append $m (dict "env" "QTB_CLIENT_SECRET_FILE" "volume" "qtb-client-secret" "dir" (printf "%s/client" $dir) "file" "client-secret" "secret" . "key" $s.clientSecret.key) }}
{{- end }}
{{- with $s.adminClientSecret.existingSecret }}
{{- $m = append $m (dict "env" "QTB_ADMIN_CLIENT_SECRET_FILE" "volume" "qtb-admin-client-secret" "dir" (printf "%s/admin-client" $dir) "file" "admin-client-secret" "secret" . "key" $s.adminClientSecret.key) }}
{{- end }}
{{- with $s.clientKey.existingSecret }}
{{- $m = append $m (dict "env" "QTB_CLIENT_KEY_FILE" "volume" "qtb-client-key" "dir" (printf "%s/client-key" $dir) "file" "client-key.pem" "secret" . "key" $s.clientKey.key) }}
{{- end }}
{{- with $s.adminClientKey.existingSecret }}
{{- $m = append $m (dict "env" "QTB_ADMIN_CLIENT_KEY_FILE" "volume" "qtb-admin-client-key" "dir" (printf "%s/admin-client-key" $dir) "file" "admin-client-key.pem" "secret" . "key" $s.adminClientKey.key) }}
{{- end }}
{{- with $s.sessionHmacSecret.existingSecret }}
{{- $m = append $m (dict "env" "QTB_SESSION_HMAC_SECRET_FILE" "volume" "qtb-session-hmac" "dir" (printf "%s/session-hmac" $dir) "file" "hmac-secret" "secret" . "key" $s.sessionHmacSecret.key) }}
{{- end }}
{{- with $s.sessionPublicKey.existingSecret }}
{{- $m = append $m (dict "env" "QTB_SESSION_PUBLIC_KEY_FILE" "volume" "qtb-session-public-key" "dir" (printf "%s/session-public-key" $dir) "file" "public-key.pem" "secret" . "key" $s.sessionPublicKey.key) }}
{{- end }}
{{- with $s.sessionPublicKey.existingConfigMap }}
{{- $m = append $m (dict "env" "QTB_SESSION_PUBLIC_KEY_FILE" "volume" "qtb-session-public-key" "dir" "/etc/qlik-token-broker/session-public-key" "file" "public-key.pem" "configMap" . "key" $s.sessionPublicKey.key) }}
{{- end }}
{{- with $s.serviceHmacSecret.existingSecret }}
{{- $m = append $m (dict "env" "QTB_SERVICE_HMAC_SECRET_FILE" "volume" "qtb-service-hmac" "dir" (printf "%s/service-hmac" $dir) "file" "hmac-secret" "secret" . "key" $s.serviceHmacSecret.key) }}
{{- end }}
{{- with $s.servicePublicKey.existingSecret }}
{{- $m = append $m (dict "env" "QTB_SERVICE_PUBLIC_KEY_FILE" "volume" "qtb-service-public-key" "dir" (printf "%s/service-public-key" $dir) "file" "public-key.pem" "secret" . "key" $s.servicePublicKey.key) }}
{{- end }}
{{- with $s.servicePublicKey.existingConfigMap }}
{{- $m = append $m (dict "env" "QTB_SERVICE_PUBLIC_KEY_FILE" "volume" "qtb-service-public-key" "dir" "/etc/qlik-token-broker/service-public-key" "file" "public-key.pem" "configMap" . "key" $s.servicePublicKey.key) }}
{{- end }}
{{- with .Values.redis.existingSecret }}
{{- $m = append $m (dict "env" "QTB_REDIS_PASSWORD_FILE" "volume" "qtb-redis-password" "dir" (printf "%s/redis" $dir) "file" "password" "secret" . "key" $.Values.redis.passwordKey) }}
{{- end }}
{{- $sp := .Values.redis.sentinelPassword }}
{{- with $sp.existingSecret }}
{{- $m = append $m (dict "env" "QTB_REDIS_SENTINEL_PASSWORD_FILE" "volume" "qtb-redis-sentinel-password" "dir" (printf "%s/redis-sentinel" $dir) "file" "password" "secret" . "key" $sp.key) }}
{{- end }}
{{- $ca := .Values.redis.ca }}
{{- with $ca.existingSecret }}
{{- $m = append $m (dict "env" "QTB_REDIS_CA_FILE" "volume" "qtb-redis-ca" "dir" (printf "%s/redis-ca" $dir) "file" "ca.pem" "secret" . "key" $ca.key) }}
{{- end }}
{{- with $ca.existingConfigMap }}
{{- $m = append $m (dict "env" "QTB_REDIS_CA_FILE" "volume" "qtb-redis-ca" "dir" "/etc/qlik-token-broker/redis-ca" "file" "ca.pem" "configMap" . "key" $ca.key) }}
{{- end }}
{{- with $s.cacheKey.existingSecret }}
{{- $m = append $m (dict "env" "QTB_CACHE_KEY_FILE" "volume" "qtb-cache-key" "dir" (printf "%s/cache-key" $dir) "file" "cache-key" "secret" . "key" $s.cacheKey.key) }}
{{- end }}
{{- if include "qlik-token-broker.multiTenant" . }}
{{- $m = append $m (dict "env" "QTB_TENANTS_FILE" "volume" "qtb-tenants" "dir" "/etc/qlik-token-broker/tenants" "file" "tenants.yaml" "configMap" (include "qlik-token-broker.tenantsConfigMapName" .) "key" .Values.tenants.key) }}
{{- end }}
{{- toJson $m }}
{{- end }}

{{/*
tenantSecretMounts lists, as JSON, the Secrets of tenants.secrets: each an
existing Secret mounted whole (every key a file, no subPath) at its
mountPath, where the tenants file's clientSecretFile and
adminClientSecretFile point. No variable names them.
*/}}
{{- define "qlik-token-broker.tenantSecretMounts" -}}
{{- $m := list }}
{{- range $i, $t := .Values.tenants.secrets }}
{{- $m = append $m (dict "volume" (printf "qtb-tenant-%d" $i) "dir" (clean $t.mountPath) "secret" $t.name) }}
{{- end }}
{{- toJson $m }}
{{- end }}

{{/* multiTenant is "true" when a tenants file (QTB_TENANTS_FILE) replaces
the single-tenant settings. */}}
{{- define "qlik-token-broker.multiTenant" -}}
{{- if or .Values.tenants.existingConfigMap .Values.tenants.inline }}true{{ end }}
{{- end }}

{{/* tracingEnabled is "true" when the OpenTelemetry exporter has somewhere
to send spans: tracing.otlpEndpoint, or an OTEL_EXPORTER_OTLP_* endpoint in
extraEnv. */}}
{{- define "qlik-token-broker.tracingEnabled" -}}
{{- $on := .Values.tracing.otlpEndpoint }}
{{- range .Values.extraEnv }}
{{- if regexMatch "^OTEL_EXPORTER_OTLP(_TRACES)?_ENDPOINT$" .name }}{{ $on = true }}{{ end }}
{{- end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* The environment variables the chart sets itself; extraEnv may not repeat them. */}}
{{- define "qlik-token-broker.managedEnv" -}}
QTB_LISTEN QTB_METRICS_LISTEN QTB_TENANT_URL QTB_CLIENT_ID QTB_CLIENT_SECRET QTB_CLIENT_SECRET_FILE QTB_SCOPE QTB_UPSTREAM_TIMEOUT QTB_UPSTREAM_CONCURRENCY QTB_UPSTREAM_RATE QTB_UPSTREAM_BURST QTB_UPSTREAM_SHARED_RATE QTB_UPSTREAM_SHARED_BURST QTB_UPSTREAM_RETRIES QTB_UPSTREAM_BREAKER_FAILURES QTB_UPSTREAM_BREAKER_OPEN QTB_USER_RATE QTB_USER_BURST QTB_REFUSAL_TTL QTB_SESSION_HMAC_SECRET QTB_SESSION_HMAC_SECRET_FILE QTB_SESSION_PUBLIC_KEY_FILE QTB_SESSION_JWKS_URL QTB_SESSION_JWKS_REFRESH QTB_SESSION_JWKS_UNKNOWN_KID_INTERVAL QTB_SESSION_ALGORITHMS QTB_SESSION_ISSUER QTB_SESSION_AUDIENCE QTB_SESSION_LEEWAY QTB_SESSION_CACHE_TTL QTB_SESSION_COOKIE QTB_USER_CLAIM QTB_USER_LOOKUP QTB_REDIS_URL QTB_REDIS_MODE QTB_REDIS_ADDRS QTB_REDIS_MASTER_NAME QTB_REDIS_CA_FILE QTB_REDIS_PASSWORD QTB_REDIS_PASSWORD_FILE QTB_REDIS_SENTINEL_USERNAME QTB_REDIS_SENTINEL_PASSWORD QTB_REDIS_SENTINEL_PASSWORD_FILE QTB_CACHE_KEY QTB_CACHE_KEY_FILE QTB_TOKEN_SKEW QTB_MIN_TOKEN_TTL QTB_REFRESH_AHEAD QTB_L1_TTL QTB_L1_ENABLED QTB_L1_MAX_ENTRIES QTB_CORS_ORIGINS QTB_CORS_ALLOW_HTTP QTB_SHUTDOWN_TIMEOUT QTB_LOG_LEVEL QTB_LOG_FORMAT QTB_TENANTS_FILE QTB_TENANT_CLAIM QTB_ADMIN_CLIENT_ID QTB_ADMIN_CLIENT_SECRET QTB_ADMIN_CLIENT_SECRET_FILE QTB_CREATE_USERS QTB_ADMIN_SCOPE QTB_JIT_SUBJECT_PREFIX QTB_SERVICE_HMAC_SECRET QTB_SERVICE_HMAC_SECRET_FILE QTB_SERVICE_PUBLIC_KEY_FILE QTB_SERVICE_JWKS_URL QTB_SERVICE_ISSUER QTB_SERVICE_AUDIENCE QTB_SERVICE_TENANTS_CLAIM QTB_PROXY_TIMEOUT QTB_PROXY_MAX_BODY QTB_PROXY_WEBSOCKET OTEL_EXPORTER_OTLP_ENDPOINT OTEL_SERVICE_NAME QTB_CLIENT_KEY_FILE QTB_CLIENT_KEY_ID QTB_CLIENT_KEY_ALG QTB_ADMIN_CLIENT_KEY_FILE QTB_ADMIN_CLIENT_KEY_ID QTB_ADMIN_CLIENT_KEY_ALG QTB_GROUPS_CLAIM QTB_GROUPS_PREFIX QTB_GROUPS_MAX
{{- end }}

{{/* validate fails the render on configurations the broker would refuse at
start, or that would put a secret where it does not belong. */}}
{{- define "qlik-token-broker.validate" -}}
{{- $v := .Values }}
{{- if and $v.tenants.existingConfigMap $v.tenants.inline }}
{{- fail "qlik-token-broker: tenants: set existingConfigMap or inline, not both" }}
{{- end }}
{{- $missing := list }}
{{- $multi := include "qlik-token-broker.multiTenant" . }}
{{- if $multi }}
{{- $single := list }}
{{- if $v.config.tenantUrl }}{{ $single = append $single "config.tenantUrl" }}{{ end }}
{{- if $v.config.clientId }}{{ $single = append $single "config.clientId" }}{{ end }}
{{- if $v.secrets.clientSecret.existingSecret }}{{ $single = append $single "secrets.clientSecret.existingSecret" }}{{ end }}
{{- if $v.config.adminClientId }}{{ $single = append $single "config.adminClientId" }}{{ end }}
{{- if $v.secrets.adminClientSecret.existingSecret }}{{ $single = append $single "secrets.adminClientSecret.existingSecret" }}{{ end }}
{{- range $k := list "clientKey" "adminClientKey" }}{{ if (get $v.secrets $k).existingSecret }}{{ $single = append $single (printf "secrets.%s.existingSecret" $k) }}{{ end }}{{ end }}
{{- range $k := list "clientKeyId" "clientKeyAlg" "adminClientKeyId" "adminClientKeyAlg" }}{{ if get $v.config $k }}{{ $single = append $single (printf "config.%s" $k) }}{{ end }}{{ end }}
{{- if $v.config.createUsers }}{{ $single = append $single "config.createUsers" }}{{ end }}
{{- if $single }}
{{- $missing = append $missing (printf "the tenants file (tenants.inline or tenants.existingConfigMap) replaces %s: set them per tenant in the file (url, clientId, clientSecretFile, adminClientId, adminClientSecretFile, createUsers)" (join ", " $single)) }}
{{- end }}
{{- else }}
{{- if not $v.config.tenantUrl }}{{ $missing = append $missing "config.tenantUrl (or a tenants file: tenants.inline or tenants.existingConfigMap)" }}{{ end }}
{{- if not $v.config.clientId }}{{ $missing = append $missing "config.clientId" }}{{ end }}
{{- if and (not $v.secrets.clientSecret.existingSecret) (not $v.secrets.clientKey.existingSecret) }}{{ $missing = append $missing "secrets.clientSecret.existingSecret" }}{{ end }}
{{- if and $v.secrets.clientSecret.existingSecret $v.secrets.clientKey.existingSecret }}{{ $missing = append $missing "secrets.clientSecret.existingSecret or secrets.clientKey.existingSecret, not both (a secret or a private key)" }}{{ end }}
{{- if and $v.secrets.adminClientSecret.existingSecret $v.secrets.adminClientKey.existingSecret }}{{ $missing = append $missing "secrets.adminClientSecret.existingSecret or secrets.adminClientKey.existingSecret, not both" }}{{ end }}
{{- if ne (empty $v.config.adminClientId) (and (empty $v.secrets.adminClientSecret.existingSecret) (empty $v.secrets.adminClientKey.existingSecret)) }}{{ $missing = append $missing "config.adminClientId and secrets.adminClientSecret.existingSecret go together (the admin client and its secret)" }}{{ end }}
{{- if and (eq $v.config.userLookup "email") (not $v.config.adminClientId) }}{{ $missing = append $missing "config.userLookup email needs the admin client that looks users up: config.adminClientId and secrets.adminClientSecret.existingSecret" }}{{ end }}
{{- if and $v.config.createUsers (ne $v.config.userLookup "email") }}{{ $missing = append $missing "config.createUsers needs config.userLookup email" }}{{ end }}
{{- if $v.tenants.secrets }}{{ $missing = append $missing "tenants.secrets needs a tenants file (tenants.inline or tenants.existingConfigMap) that points at them" }}{{ end }}
{{- end }}
{{- $sources := 0 }}
{{- if $v.secrets.sessionHmacSecret.existingSecret }}{{ $sources = add1 $sources }}{{ end }}
{{- if or $v.secrets.sessionPublicKey.existingSecret $v.secrets.sessionPublicKey.existingConfigMap }}{{ $sources = add1 $sources }}{{ end }}
{{- if $v.config.session.jwksUrl }}{{ $sources = add1 $sources }}{{ end }}
{{- if ne (int $sources) 1 }}{{ $missing = append $missing (printf "exactly one session key source: secrets.sessionHmacSecret.existingSecret, secrets.sessionPublicKey.existingSecret/existingConfigMap or config.session.jwksUrl (%d set)" (int $sources)) }}{{ end }}
{{- $svc := $v.config.service }}
{{- $svcSources := 0 }}
{{- if $v.secrets.serviceHmacSecret.existingSecret }}{{ $svcSources = add1 $svcSources }}{{ end }}
{{- if or $v.secrets.servicePublicKey.existingSecret $v.secrets.servicePublicKey.existingConfigMap }}{{ $svcSources = add1 $svcSources }}{{ end }}
{{- if $svc.jwksUrl }}{{ $svcSources = add1 $svcSources }}{{ end }}
{{- if gt (int $svcSources) 1 }}{{ $missing = append $missing (printf "at most one service key source: secrets.serviceHmacSecret.existingSecret, secrets.servicePublicKey.existingSecret/existingConfigMap or config.service.jwksUrl (%d set)" (int $svcSources)) }}{{ end }}
{{- if gt (int $svcSources) 0 }}
{{- if not $svc.audience }}{{ $missing = append $missing "config.service.audience is required with service credentials" }}{{ end }}
{{- if and $svc.audience (eq $svc.audience $v.config.session.audience) }}{{ $missing = append $missing "config.service.audience must differ from config.session.audience, so a user session can never pass as a service credential" }}{{ end }}
{{- else if or $svc.audience $svc.issuer }}
{{- $missing = append $missing "config.service.issuer/audience are set but no service key source is: set secrets.serviceHmacSecret, secrets.servicePublicKey or config.service.jwksUrl (or clear them)" }}
{{- end }}
{{- if $missing }}
{{- fail (printf "qlik-token-broker: missing or conflicting values:\n  - %s" (join "\n  - " $missing)) }}
{{- end }}
{{- if and $v.secrets.sessionPublicKey.existingSecret $v.secrets.sessionPublicKey.existingConfigMap }}
{{- fail "qlik-token-broker: secrets.sessionPublicKey: set existingSecret or existingConfigMap, not both" }}
{{- end }}
{{- if and $v.secrets.servicePublicKey.existingSecret $v.secrets.servicePublicKey.existingConfigMap }}
{{- fail "qlik-token-broker: secrets.servicePublicKey: set existingSecret or existingConfigMap, not both" }}
{{- end }}
{{- include "qlik-token-broker.validateTenants" . }}
{{- $r := $v.redis }}
{{- /* Not in the schema: its error would read only "'not' failed". The
message never repeats the URL, which holds the password. */}}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]*@|[?&][^=&#]*(password|%)[^=&#]*=" (toString $r.url) }}
{{- fail "qlik-token-broker: redis.url holds a password (user:password@ or a password query parameter): remove it from the URL and put the password in an existing Secret named by redis.existingSecret (key redis.passwordKey); the broker reads it from QTB_REDIS_PASSWORD_FILE. A user name alone may stay in the URL." }}
{{- end }}
{{- $redis := include "qlik-token-broker.redisEnabled" . }}
{{- if and $r.existingSecret (not $redis) }}
{{- fail "qlik-token-broker: redis.existingSecret needs redis.url or redis.addrs" }}
{{- end }}
{{- if and $v.config.upstreamSharedRate (not $redis) }}
{{- fail "qlik-token-broker: config.upstreamSharedRate is counted in Redis: it needs redis.url or redis.addrs" }}
{{- end }}
{{- if and $r.ca.existingSecret $r.ca.existingConfigMap }}
{{- fail "qlik-token-broker: redis.ca: set existingSecret or existingConfigMap, not both" }}
{{- end }}
{{- if and (or $r.ca.existingSecret $r.ca.existingConfigMap) (not (hasPrefix "rediss://" $r.url)) }}
{{- fail "qlik-token-broker: redis.ca needs a rediss:// redis.url (TLS is configured by the URL's scheme)" }}
{{- end }}
{{- $mode := default "standalone" $r.mode }}
{{- if and (ne $mode "standalone") (not $redis) }}
{{- fail (printf "qlik-token-broker: redis.mode %s needs redis.url or redis.addrs" $mode) }}
{{- end }}
{{- if and $r.addrs (eq $mode "standalone") }}
{{- fail "qlik-token-broker: redis.addrs is for redis.mode cluster or sentinel; standalone takes redis.url only" }}
{{- end }}
{{- if and $r.masterName (ne $mode "sentinel") }}
{{- fail "qlik-token-broker: redis.masterName is for redis.mode sentinel" }}
{{- end }}
{{- if and (eq $mode "sentinel") (not $r.masterName) (not (regexMatch "[?&]master_name=[^&#]" $r.url)) }}
{{- fail "qlik-token-broker: redis.mode sentinel needs redis.masterName (or ?master_name= in redis.url)" }}
{{- end }}
{{- range $name, $set := dict "redis.sentinelUsername" $r.sentinelUsername "redis.sentinelPassword.existingSecret" $r.sentinelPassword.existingSecret }}
{{- if and $set (ne $mode "sentinel") }}
{{- fail (printf "qlik-token-broker: %s is for redis.mode sentinel: it authenticates to the sentinels" $name) }}
{{- end }}
{{- end }}
{{- if and $r.sentinelUsername (not $r.sentinelPassword.existingSecret) }}
{{- fail "qlik-token-broker: redis.sentinelUsername needs redis.sentinelPassword.existingSecret: Redis sends a user name only with its password" }}
{{- end }}
{{- if and (kindIs "bool" $v.config.l1Enabled) (not $v.config.l1Enabled) (not $redis) }}
{{- fail "qlik-token-broker: config.l1Enabled false needs Redis (redis.url or redis.addrs): the in-process cache is the only cache without it" }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.memoryCacheMax) }}
{{- fail "qlik-token-broker: config.memoryCacheMax was renamed config.l1MaxEntries (QTB_L1_MAX_ENTRIES)" }}
{{- end }}
{{- include "qlik-token-broker.validateDurations" . }}
{{- /* The sleep action is beta, on by default, from 1.30 (PodLifecycleSleepAction).
Below 1.29 Helm refuses the chart itself (Chart.yaml kubeVersion), except
helm lint, which renders for v1.20 and installs nothing. */}}
{{- $kube := .Capabilities.KubeVersion.Version }}
{{- if and (gt (int $v.preStopSleepSeconds) 0) (semverCompare ">=1.29.0-0" $kube) (semverCompare "<1.30.0-0" $kube) }}
{{- fail (printf "qlik-token-broker: preStopSleepSeconds needs Kubernetes 1.30 or later (the preStop sleep action); this cluster is %s: set preStopSleepSeconds: 0" $kube) }}
{{- end }}
{{- if eq (int $v.ports.api) (int $v.ports.metrics) }}
{{- fail "qlik-token-broker: ports.api and ports.metrics must differ" }}
{{- end }}
{{- $managed := splitList " " (include "qlik-token-broker.managedEnv" .) }}
{{- range $v.extraEnv }}
{{- if has .name $managed }}
{{- fail (printf "qlik-token-broker: extraEnv %s: set by the chart; use its value instead" .name) }}
{{- end }}
{{- /* OpenTelemetry's *_KEY variables (OTEL_EXPORTER_OTLP_CLIENT_KEY) are file paths. */}}
{{- if and (regexMatch "SECRET|PASSWORD|KEY" (upper .name)) (not (hasSuffix "_FILE" .name)) (not (hasPrefix "OTEL_" .name)) }}
{{- fail (printf "qlik-token-broker: extraEnv %s: secrets go in files (an existing Secret in extraVolumes, and a *_FILE variable)" .name) }}
{{- end }}
{{- if and (regexMatch "^OTEL_EXPORTER_OTLP(_TRACES|_METRICS|_LOGS)?_HEADERS$" .name) (regexMatch "(?i)authori[sz]ation|api[-_]?key|token|secret|password|bearer|basic" (default "" .value)) }}
{{- fail (printf "qlik-token-broker: extraEnv %s: credentials in the pod spec; send spans to a collector that adds them (e.g. an OpenTelemetry Collector in the cluster)" .name) }}
{{- end }}
{{- end }}
{{- $otlp := toString $v.tracing.otlpEndpoint }}
{{- $otlpTLS := list }}
{{- range $v.extraEnv }}
{{- if eq .name "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" }}{{ $otlp = toString .value }}{{ end }}
{{- if regexMatch "^OTEL_EXPORTER_OTLP(_TRACES)?_(CERTIFICATE|CLIENT_CERTIFICATE|CLIENT_KEY)$" .name }}{{ $otlpTLS = append $otlpTLS .name }}{{ end }}
{{- end }}
{{- if and $otlpTLS (hasPrefix "http://" (lower $otlp)) }}
{{- fail (printf "qlik-token-broker: extraEnv %s configure TLS for the OTLP exporter, but its endpoint is http://: use https:// (the exporter refuses TLS settings for plain HTTP, and the broker would not start)" (join ", " $otlpTLS)) }}
{{- end }}
{{- range $v.extraVolumeMounts }}
{{- if .subPath }}
{{- fail (printf "qlik-token-broker: extraVolumeMounts %s: subPath mounts never see updates; mount the directory" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* validateTenants checks tenants.secrets, and an inline tenants file
against them: every secret file it names must lie in a mounted directory,
and several tenants need config.tenantClaim. An existingConfigMap's content
is not visible to the chart; the broker checks it at start. */}}
{{- define "qlik-token-broker.validateTenants" -}}
{{- $v := .Values }}
{{- $chartDirs := list }}
{{- range include "qlik-token-broker.fileMounts" . | fromJsonArray }}
{{- $chartDirs = append $chartDirs .dir }}
{{- end }}
{{- $mounted := list }}
{{- range $t := include "qlik-token-broker.tenantSecretMounts" . | fromJsonArray }}
{{- range $d := $chartDirs }}
{{- if or (eq $t.dir $d) (hasPrefix (printf "%s/" $d) $t.dir) (hasPrefix (printf "%s/" $t.dir) $d) }}
{{- fail (printf "qlik-token-broker: tenants.secrets %s: mountPath %s overlaps the chart's mount %s; use another directory, e.g. /etc/qlik-token-broker/<tenant-id>" $t.secret $t.dir $d) }}
{{- end }}
{{- end }}
{{- range $d := $mounted }}
{{- if or (eq $t.dir $d) (hasPrefix (printf "%s/" $d) $t.dir) (hasPrefix (printf "%s/" $t.dir) $d) }}
{{- fail (printf "qlik-token-broker: tenants.secrets %s: mountPath %s overlaps another tenant's %s" $t.secret $t.dir $d) }}
{{- end }}
{{- end }}
{{- $mounted = append $mounted $t.dir }}
{{- end }}
{{- range $v.extraVolumeMounts }}
{{- $mounted = append $mounted (clean .mountPath) }}
{{- end }}
{{- with $v.tenants.inline }}
{{- $file := . }}
{{- if kindIs "string" . }}
{{- $file = fromYaml . }}
{{- if hasKey $file "Error" }}
{{- fail (printf "qlik-token-broker: tenants.inline is not YAML: %s" $file.Error) }}
{{- end }}
{{- end }}
{{- $list := get $file "tenants" }}
{{- if not (kindIs "slice" $list) }}
{{- fail "qlik-token-broker: tenants.inline needs a tenants: list (README, \"Many tenants\")" }}
{{- end }}
{{- if and (gt (len $list) 1) (not $v.config.tenantClaim) }}
{{- fail (printf "qlik-token-broker: %d tenants need config.tenantClaim (QTB_TENANT_CLAIM), the session claim naming the tenant" (len $list)) }}
{{- end }}
{{- range $i, $e := $list }}
{{- range $field := list "clientSecretFile" "adminClientSecretFile" "clientKeyFile" "adminClientKeyFile" }}
{{- $f := get $e $field }}
{{- if $f }}
{{- if not (has (dir (toString $f)) $mounted) }}
{{- fail (printf "qlik-token-broker: tenants.inline: tenant %v: %s %s is in no mounted Secret: add {name: <Secret>, mountPath: %s} to tenants.secrets" (default (add1 $i) $e.id) $field $f (dir (toString $f))) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* redisEnabled is "true" when any value asks for Redis, as the broker's
redisEnabled(): a URL or cluster/sentinel addresses. */}}
{{- define "qlik-token-broker.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.addrs }}true{{ end }}
{{- end }}

{{/* durationSeconds turns a Go duration ("1h30m", "300ms", "0") into
seconds. The schema has checked the syntax already. */}}
{{- define "qlik-token-broker.durationSeconds" -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll `[0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h)` . -1 }}
{{- $n := regexFind `^[0-9]+(\.[0-9]+)?` . }}
{{- $total = addf $total (mulf (float64 $n) (get $units (trimPrefix $n .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* validateDurations checks the ranges the broker enforces at start; an
empty value stands for the broker's default. */}}
{{- define "qlik-token-broker.validateDurations" -}}
{{- $c := .Values.config }}
{{- $sec := dict }}
{{- range $name, $def := dict "upstreamTimeout" "10s" "upstreamBreakerOpen" "30s" "tokenSkew" "60s" "minTokenTtl" "10m" "refreshAhead" "1h" "l1Ttl" "5m" }}
{{- $_ := set $sec $name (include "qlik-token-broker.durationSeconds" (default $def (get $c $name)) | float64) }}
{{- end }}
{{- $_ := set $sec "leeway" (include "qlik-token-broker.durationSeconds" (default "30s" $c.session.leeway) | float64) }}
{{- $_ = set $sec "proxyTimeout" (include "qlik-token-broker.durationSeconds" (default "5m" $c.proxy.timeout) | float64) }}
{{- $bad := list }}
{{- if le $sec.upstreamTimeout 0.0 }}{{ $bad = append $bad "config.upstreamTimeout (QTB_UPSTREAM_TIMEOUT) must be positive" }}{{ end }}
{{- if lt $sec.upstreamBreakerOpen 1.0 }}{{ $bad = append $bad "config.upstreamBreakerOpen (QTB_UPSTREAM_BREAKER_OPEN) must be at least 1s" }}{{ end }}
{{- if gt $sec.leeway 300.0 }}{{ $bad = append $bad "config.session.leeway (QTB_SESSION_LEEWAY) must be between 0 and 5m" }}{{ end }}
{{- if gt $sec.tokenSkew 3600.0 }}{{ $bad = append $bad "config.tokenSkew (QTB_TOKEN_SKEW) must be between 0 and 1h" }}{{ end }}
{{- if or (lt $sec.minTokenTtl 60.0) (gt $sec.minTokenTtl 10800.0) }}{{ $bad = append $bad "config.minTokenTtl (QTB_MIN_TOKEN_TTL) must be between 1m and 3h" }}{{ end }}
{{- if or (le $sec.refreshAhead $sec.minTokenTtl) (gt $sec.refreshAhead 18000.0) }}{{ $bad = append $bad "config.refreshAhead (QTB_REFRESH_AHEAD) must exceed config.minTokenTtl and be at most 5h" }}{{ end }}
{{- if le $sec.l1Ttl 0.0 }}{{ $bad = append $bad "config.l1Ttl (QTB_L1_TTL) must be positive" }}{{ end }}
{{- if le $sec.proxyTimeout 0.0 }}{{ $bad = append $bad "config.proxy.timeout (QTB_PROXY_TIMEOUT) must be positive" }}{{ end }}
{{- if $bad }}
{{- fail (printf "qlik-token-broker: invalid values:\n  - %s" (join "\n  - " $bad)) }}
{{- end }}
{{- end }}

{{- define "qlik-token-broker.container" -}}
{{- include "qlik-token-broker.validate" . }}
{{- $c := .Values.config }}
{{- $api := include "qlik-token-broker.apiPortName" . -}}
name: {{ if eq .Values.mode "sidecar" }}{{ .Values.sidecar.containerName }}{{ else }}qlik-token-broker{{ end }}
image: {{ include "qlik-token-broker.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- /* The image's ENTRYPOINT is the binary and its CMD ["serve"]; args
replaces CMD, so the subcommand is explicit here and no command overrides
ENTRYPOINT. helm/compose_test.go runs the two composed. */}}
args: ["serve"]
ports:
  - name: {{ $api }}
    containerPort: {{ .Values.ports.api }}
    protocol: TCP
  - name: {{ include "qlik-token-broker.metricsPortName" . }}
    containerPort: {{ .Values.ports.metrics }}
    protocol: TCP
env:
  - name: QTB_LISTEN
    value: {{ printf ":%d" (int .Values.ports.api) | quote }}
  - name: QTB_METRICS_LISTEN
    value: {{ printf ":%d" (int .Values.ports.metrics) | quote }}
  {{- with $c.tenantUrl }}
  - name: QTB_TENANT_URL
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.clientId }}
  - name: QTB_CLIENT_ID
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.tenantClaim }}
  - name: QTB_TENANT_CLAIM
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.adminClientId }}
  - name: QTB_ADMIN_CLIENT_ID
    value: {{ . | quote }}
  {{- end }}
  {{- range $name, $env := dict "clientKeyId" "QTB_CLIENT_KEY_ID" "clientKeyAlg" "QTB_CLIENT_KEY_ALG" "adminClientKeyId" "QTB_ADMIN_CLIENT_KEY_ID" "adminClientKeyAlg" "QTB_ADMIN_CLIENT_KEY_ALG" }}
  {{- with get $c $name }}
  - name: {{ $env }}
    value: {{ . | quote }}
  {{- end }}
  {{- end }}
  {{- if $c.createUsers }}
  - name: QTB_CREATE_USERS
    value: "true"
  {{- end }}
  {{- with $c.adminScope }}
  - name: QTB_ADMIN_SCOPE
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.jitSubjectPrefix }}
  - name: QTB_JIT_SUBJECT_PREFIX
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.groupsClaim }}
  - name: QTB_GROUPS_CLAIM
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.groupsPrefix }}
  - name: QTB_GROUPS_PREFIX
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.groupsMax }}
  - name: QTB_GROUPS_MAX
    value: {{ int . | toString | quote }}
  {{- end }}
  {{- range include "qlik-token-broker.fileMounts" . | fromJsonArray }}
  - name: {{ .env }}
    value: {{ printf "%s/%s" .dir .file | quote }}
  {{- end }}
  {{- with $c.scope }}
  - name: QTB_SCOPE
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.upstreamTimeout }}
  - name: QTB_UPSTREAM_TIMEOUT
    value: {{ . | quote }}
  {{- end }}
  {{- /* Rendered unless null: 0 upstream retries means none. A rate or the
  burst of 0 is the broker's default, so it is not rendered. */}}
  {{- if not (kindIs "invalid" $c.upstreamConcurrency) }}
  - name: QTB_UPSTREAM_CONCURRENCY
    value: {{ int $c.upstreamConcurrency | toString | quote }}
  {{- end }}
  {{- with $c.upstreamRate }}
  - name: QTB_UPSTREAM_RATE
    value: {{ toString . | quote }}
  {{- end }}
  {{- with $c.upstreamBurst }}
  - name: QTB_UPSTREAM_BURST
    value: {{ int . | toString | quote }}
  {{- end }}
  {{- with $c.upstreamSharedRate }}
  - name: QTB_UPSTREAM_SHARED_RATE
    value: {{ toString . | quote }}
  {{- end }}
  {{- with $c.upstreamSharedBurst }}
  - name: QTB_UPSTREAM_SHARED_BURST
    value: {{ int . | toString | quote }}
  {{- end }}
  {{- if not (kindIs "invalid" $c.upstreamRetries) }}
  - name: QTB_UPSTREAM_RETRIES
    value: {{ int $c.upstreamRetries | toString | quote }}
  {{- end }}
  {{- if not (kindIs "invalid" $c.upstreamBreakerFailures) }}
  - name: QTB_UPSTREAM_BREAKER_FAILURES
    value: {{ int $c.upstreamBreakerFailures | toString | quote }}
  {{- end }}
  {{- with $c.upstreamBreakerOpen }}
  - name: QTB_UPSTREAM_BREAKER_OPEN
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.userRate }}
  - name: QTB_USER_RATE
    value: {{ toString . | quote }}
  {{- end }}
  {{- if not (kindIs "invalid" $c.userBurst) }}
  - name: QTB_USER_BURST
    value: {{ int $c.userBurst | toString | quote }}
  {{- end }}
  {{- with $c.refusalTtl }}
  - name: QTB_REFUSAL_TTL
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.session.jwksUrl }}
  - name: QTB_SESSION_JWKS_URL
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.session.algorithms }}
  - name: QTB_SESSION_ALGORITHMS
    value: {{ join "," . | quote }}
  {{- end }}
  {{- with $c.session.issuer }}
  - name: QTB_SESSION_ISSUER
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.session.audience }}
  - name: QTB_SESSION_AUDIENCE
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.session.leeway }}
  - name: QTB_SESSION_LEEWAY
    value: {{ . | quote }}
  {{- end }}
  {{- if hasKey $c.session "cacheTtl" }}
  - name: QTB_SESSION_CACHE_TTL
    value: {{ $c.session.cacheTtl | quote }}
  {{- end }}
  {{- with $c.session.cookie }}
  - name: QTB_SESSION_COOKIE
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.session.jwksRefresh }}
  - name: QTB_SESSION_JWKS_REFRESH
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.session.jwksUnknownKidInterval }}
  - name: QTB_SESSION_JWKS_UNKNOWN_KID_INTERVAL
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.userClaim }}
  - name: QTB_USER_CLAIM
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.userLookup }}
  - name: QTB_USER_LOOKUP
    value: {{ . | quote }}
  {{- end }}
  {{- if include "qlik-token-broker.redisEnabled" . }}
  {{- $r := .Values.redis }}
  {{- with $r.url }}
  - name: QTB_REDIS_URL
    value: {{ . | quote }}
  {{- end }}
  {{- with $r.mode }}
  - name: QTB_REDIS_MODE
    value: {{ . | quote }}
  {{- end }}
  {{- with $r.addrs }}
  - name: QTB_REDIS_ADDRS
    value: {{ join "," . | quote }}
  {{- end }}
  {{- with $r.masterName }}
  - name: QTB_REDIS_MASTER_NAME
    value: {{ . | quote }}
  {{- end }}
  {{- with $r.sentinelUsername }}
  - name: QTB_REDIS_SENTINEL_USERNAME
    value: {{ . | quote }}
  {{- end }}
  {{- end }}
  {{- with $c.tokenSkew }}
  - name: QTB_TOKEN_SKEW
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.minTokenTtl }}
  - name: QTB_MIN_TOKEN_TTL
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.refreshAhead }}
  - name: QTB_REFRESH_AHEAD
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.l1Ttl }}
  - name: QTB_L1_TTL
    value: {{ . | quote }}
  {{- end }}
  {{- if and (kindIs "bool" $c.l1Enabled) (not $c.l1Enabled) }}
  - name: QTB_L1_ENABLED
    value: "false"
  {{- end }}
  {{- with $c.l1MaxEntries }}
  - name: QTB_L1_MAX_ENTRIES
    value: {{ int . | toString | quote }}
  {{- end }}
  {{- with $c.corsOrigins }}
  - name: QTB_CORS_ORIGINS
    value: {{ join "," . | quote }}
  {{- end }}
  {{- if $c.corsAllowHttp }}
  - name: QTB_CORS_ALLOW_HTTP
    value: "true"
  {{- end }}
  {{- $svc := $c.service }}
  {{- if or $svc.jwksUrl .Values.secrets.serviceHmacSecret.existingSecret .Values.secrets.servicePublicKey.existingSecret .Values.secrets.servicePublicKey.existingConfigMap }}
  {{- with $svc.jwksUrl }}
  - name: QTB_SERVICE_JWKS_URL
    value: {{ . | quote }}
  {{- end }}
  {{- with $svc.issuer }}
  - name: QTB_SERVICE_ISSUER
    value: {{ . | quote }}
  {{- end }}
  {{- with $svc.audience }}
  - name: QTB_SERVICE_AUDIENCE
    value: {{ . | quote }}
  {{- end }}
  {{- with $svc.tenantsClaim }}
  - name: QTB_SERVICE_TENANTS_CLAIM
    value: {{ . | quote }}
  {{- end }}
  {{- end }}
  {{- with $c.proxy.timeout }}
  - name: QTB_PROXY_TIMEOUT
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.proxy.maxBody }}
  - name: QTB_PROXY_MAX_BODY
    value: {{ int64 . | toString | quote }}
  {{- end }}
  {{- if $c.proxy.websocket }}
  - name: QTB_PROXY_WEBSOCKET
    value: "true"
  {{- end }}
  - name: QTB_SHUTDOWN_TIMEOUT
    value: {{ printf "%ds" (int $c.shutdownTimeoutSeconds) | quote }}
  {{- with $c.logLevel }}
  - name: QTB_LOG_LEVEL
    value: {{ . | quote }}
  {{- end }}
  {{- with $c.logFormat }}
  - name: QTB_LOG_FORMAT
    value: {{ . | quote }}
  {{- end }}
  {{- with .Values.tracing.otlpEndpoint }}
  - name: OTEL_EXPORTER_OTLP_ENDPOINT
    value: {{ . | quote }}
  {{- end }}
  {{- if and .Values.tracing.serviceName (include "qlik-token-broker.tracingEnabled" .) }}
  - name: OTEL_SERVICE_NAME
    value: {{ .Values.tracing.serviceName | quote }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumeMounts:
  {{- range include "qlik-token-broker.fileMounts" . | fromJsonArray }}
  - name: {{ .volume }}
    mountPath: {{ .dir }}
    readOnly: true
  {{- end }}
  {{- range include "qlik-token-broker.tenantSecretMounts" . | fromJsonArray }}
  - name: {{ .volume }}
    mountPath: {{ .dir }}
    readOnly: true
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ $api }}
  {{- toYaml .Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ $api }}
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ $api }}
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- if gt (int .Values.preStopSleepSeconds) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .Values.preStopSleepSeconds }}
{{- end }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/* volumes lists the pod volumes behind fileMounts (plus extraVolumes). */}}
{{- define "qlik-token-broker.volumes" -}}
{{- /* Without the chart's fsGroup (sidecar mode) the files must be world-readable to uid 65532. */}}
{{- $mode := ternary 292 288 (eq .Values.mode "sidecar") }}
{{- range include "qlik-token-broker.fileMounts" . | fromJsonArray }}
- name: {{ .volume }}
  {{- if .secret }}
  secret:
    secretName: {{ .secret | quote }}
  {{- else }}
  configMap:
    name: {{ .configMap | quote }}
  {{- end }}
    defaultMode: {{ $mode }}
    items:
      - key: {{ .key | quote }}
        path: {{ .file }}
{{- end }}
{{- range include "qlik-token-broker.tenantSecretMounts" . | fromJsonArray }}
- name: {{ .volume }}
  secret:
    secretName: {{ .secret | quote }}
    defaultMode: {{ $mode }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
sidecarContainer is the broker as a container of the OEM app's pod: a native
sidecar (for initContainers, with restartPolicy: Always) when
sidecar.native, else a plain entry for containers. Pair it with
sidecarVolumes. From a parent chart:

  initContainers:
    - {{ include "qlik-token-broker.sidecarContainer" (index .Subcharts "qlik-token-broker") | indent 6 | trim }}
  volumes:
    {{- include "qlik-token-broker.sidecarVolumes" (index .Subcharts "qlik-token-broker") | nindent 4 }}
*/}}
{{- define "qlik-token-broker.sidecarContainer" -}}
{{- include "qlik-token-broker.container" . }}
{{- if .Values.sidecar.native }}
restartPolicy: Always
{{- end }}
{{- end }}

{{- define "qlik-token-broker.sidecarVolumes" -}}
{{- include "qlik-token-broker.volumes" . | trim }}
{{- end }}
