{{/*
Names, labels and the derived values every template shares.
*/}}

{{/* The chart name, overridable. */}}
{{- define "slm-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource-name prefix: <release>-<chart>, or <release> when it already contains the chart name.
Truncated to 63 characters (DNS label) minus room for the "-redis"/"-vllm" suffixes.
*/}}
{{- define "slm-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "slm-gateway.redis.fullname" -}}
{{- printf "%s-redis" (include "slm-gateway.fullname" .) }}
{{- end }}

{{- define "slm-gateway.vllm.fullname" -}}
{{- printf "%s-vllm" (include "slm-gateway.fullname" .) }}
{{- end }}

{{- define "slm-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; the component label is added per object. */}}
{{- define "slm-gateway.labels" -}}
helm.sh/chart: {{ include "slm-gateway.chart" . }}
app.kubernetes.io/name: {{ include "slm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slm-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "slm-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slm-gateway.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full labels of one component: call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "slm-gateway.componentLabels" -}}
{{ include "slm-gateway.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "slm-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slm-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slm-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Seconds Kubernetes waits before SIGKILL: preStop sleep + drain + margin for shutdown and flush. */}}
{{- define "slm-gateway.terminationGracePeriodSeconds" -}}
{{- $g := .Values.gateway }}
{{- if gt (int $g.terminationGracePeriodSeconds) 0 }}
{{- int $g.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int $g.preStopSleepSeconds) (int (ceil $g.drainSeconds)) 10 }}
{{- end }}
{{- end }}

{{/*
The policy document the ConfigMap carries: values.policyYaml verbatim when set, else values.policy;
with vllm.enabled the backend named vllm.policyBackend becomes the in-chart vLLM service.
*/}}
{{- define "slm-gateway.policy" -}}
{{- $policy := deepCopy .Values.policy }}
{{- if .Values.policyYaml }}
{{- $policy = fromYaml .Values.policyYaml }}
{{- if or (hasKey $policy "Error") (not (hasKey $policy "backends")) }}
{{- fail (printf "policyYaml is not a policy document (a YAML mapping with backends and models): %v" (get $policy "Error")) }}
{{- end }}
{{- end }}
{{- if and .Values.policyYaml (not .Values.vllm.enabled) }}
{{- .Values.policyYaml | trim }}
{{- else }}
{{- if .Values.vllm.enabled }}
{{- $backends := deepCopy (default (dict) (get $policy "backends")) }}
{{- $vllm := dict
    "type" "openai"
    "base_url" (printf "http://%s:%d/v1" (include "slm-gateway.vllm.fullname" .) (int .Values.vllm.port))
    "model" .Values.vllm.servedModelName
    "context_length" (int .Values.vllm.maxModelLen)
    "price" .Values.vllm.price
    "supports_prefix_continuation" true }}
{{- $_ := set $backends .Values.vllm.policyBackend $vllm }}
{{- $_ := set $policy "backends" $backends }}
{{- end }}
{{- toYaml $policy }}
{{- end }}
{{- end }}

{{/* Settings that cannot be expressed in values.schema.json. */}}
{{- define "slm-gateway.validate" -}}
{{- if and .Values.redis.enabled (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "redis.enabled runs Redis in the chart; unset redis.url / redis.existingSecret, or set redis.enabled=false to use an external Redis" }}
{{- end }}
{{- end }}
