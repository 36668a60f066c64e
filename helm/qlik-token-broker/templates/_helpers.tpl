{{/*
Every named template here takes a chart context (.Values, .Chart, .Release,
.Capabilities): the chart's own, or `index .Subcharts "qlik-token-broker"`
from a parent chart. None of them uses .Template, which that context lacks.
*/}}

{{- define "qlik-token-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qlik-token-broker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qlik-token-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qlik-token-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qlik-token-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "qlik-token-broker.labels" -}}
helm.sh/chart: {{ include "qlik-token-broker.chart" . }}
{{ include "qlik-token-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ include "qlik-token-broker.imageTag" . | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: token-broker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "qlik-token-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qlik-token-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "qlik-token-broker.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "qlik-token-broker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "qlik-token-broker.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "qlik-token-broker.tenantsConfigMapName" -}}
{{- default (printf "%s-tenants" (include "qlik-token-broker.fullname" .)) .Values.tenants.existingConfigMap }}
{{- end }}

{{/* Port names: in sidecar mode they share the OEM pod, so carry a prefix. */}}
{{- define "qlik-token-broker.apiPortName" -}}
{{- if eq .Values.mode "sidecar" }}qtb-api{{ else }}api{{ end }}
{{- end }}

{{- define "qlik-token-broker.metricsPortName" -}}
{{- if eq .Values.mode "sidecar" }}qtb-metrics{{ else }}metrics{{ end }}
{{- end }}

{{/* The pod's grace period must outlast the broker's own drain. */}}
{{- define "qlik-token-broker.terminationGracePeriodSeconds" -}}
{{- $min := add (int .Values.config.shutdownTimeoutSeconds) (int .Values.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $min 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $min) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.shutdownTimeoutSeconds + preStopSleepSeconds (%d)" (int .Values.terminationGracePeriodSeconds) (int $min)) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* A hash of everything that shapes the broker's configuration, so a change
rolls the pods (the tenants ConfigMap content included). */}}
{{- define "qlik-token-broker.configChecksum" -}}
{{- dict "config" .Values.config "secrets" .Values.secrets "redis" .Values.redis "tenants" .Values.tenants "ports" .Values.ports "extraEnv" .Values.extraEnv "tracing" .Values.tracing | toJson | sha256sum }}
{{- end }}

{{- define "qlik-token-broker.replicasAboveOne" -}}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) 1 }}true{{ end }}
{{- else if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}
