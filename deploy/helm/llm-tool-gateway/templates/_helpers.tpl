{{/* Names, labels and the rendered gateway.yaml. */}}

{{- define "llm-tool-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-tool-gateway.fullname" -}}
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

{{- define "llm-tool-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-tool-gateway.commonLabels" -}}
helm.sh/chart: {{ include "llm-tool-gateway.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "llm-tool-gateway.name" . }}
{{- end }}

{{- define "llm-tool-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-tool-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "llm-tool-gateway.labels" -}}
{{ include "llm-tool-gateway.commonLabels" . }}
{{ include "llm-tool-gateway.selectorLabels" . }}
{{- end }}

{{- define "llm-tool-gateway.redis.fullname" -}}
{{- printf "%s-redis" (include "llm-tool-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-tool-gateway.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-tool-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "llm-tool-gateway.redis.labels" -}}
{{ include "llm-tool-gateway.commonLabels" . }}
{{ include "llm-tool-gateway.redis.selectorLabels" . }}
{{- end }}

{{- define "llm-tool-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-tool-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "llm-tool-gateway.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (required "an image tag is required" .tag) }}
{{- end }}
{{- end }}

{{/* The most gateway pods that may run at once. */}}
{{- define "llm-tool-gateway.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- int .Values.autoscaling.maxReplicas }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* The fewest gateway pods that run when nothing is being rolled or drained. */}}
{{- define "llm-tool-gateway.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- int .Values.autoscaling.minReplicas }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* state.redis_url for the gateway, or "" when there is no Redis. */}}
{{- define "llm-tool-gateway.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- $credentials := "" }}
{{- if .Values.redis.auth.existingSecret.name }}
{{- $credentials = ":${GATEWAY_REDIS_PASSWORD}@" }}
{{- end }}
{{- printf "redis://%s%s:6379/0" $credentials (include "llm-tool-gateway.redis.fullname" .) }}
{{- else if .Values.redis.urlSecret.name }}
{{- print "${GATEWAY_REDIS_URL}" }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* gateway.yaml: .Values.config, plus auth keys, upstream keys and state from the chart's values. */}}
{{- define "llm-tool-gateway.gatewayConfig" -}}
{{- $config := deepCopy .Values.config }}
{{- if hasKey $config "auth" }}
{{- fail "set gateway API keys in `auth.apiKeys` (each from a Secret), not in `config.auth`" }}
{{- end }}
{{- if hasKey $config "state" }}
{{- fail "the chart sets `state` from `redis`: set redis.enabled, redis.url or redis.urlSecret instead of `config.state`" }}
{{- end }}
{{- $upstreams := list }}
{{- range $index, $upstream := .Values.config.upstreams }}
{{- $rendered := omit $upstream "apiKeySecret" }}
{{- if and $upstream.apiKeySecret $upstream.apiKeySecret.name }}
{{- if hasKey $upstream "api_key" }}
{{- fail (printf "upstream %s: set apiKeySecret or api_key, not both" $upstream.name) }}
{{- end }}
{{- $_ := set $rendered "api_key" (printf "${UPSTREAM_API_KEY_%d}" $index) }}
{{- end }}
{{- $upstreams = append $upstreams $rendered }}
{{- end }}
{{- $_ := set $config "upstreams" $upstreams }}
{{- if and (not .Values.auth.apiKeys) (not (dig "server" "allow_unauthenticated_public" false $config)) }}
{{- fail "auth.apiKeys is empty: the gateway would serve anyone who reaches the Service. Add keys, or set config.server.allow_unauthenticated_public: true to run it open on purpose" }}
{{- end }}
{{- $keys := list }}
{{- range $index, $key := .Values.auth.apiKeys }}
{{- $keys = append $keys (dict "name" (required "every auth.apiKeys entry needs a name" $key.name) "key" (printf "${GATEWAY_API_KEY_%d}" $index)) }}
{{- end }}
{{- $_ := set $config "auth" (dict "api_keys" $keys) }}
{{- $redisUrl := include "llm-tool-gateway.redisUrl" . }}
{{- $workers := int (default 1 (.Values.config.server | default dict).workers) }}
{{- if $redisUrl }}
{{- $_ := set $config "state" (dict "backend" "redis" "redis_url" $redisUrl "key_prefix" .Values.redis.keyPrefix "timeout_s" .Values.redis.timeoutSeconds) }}
{{- else if or (gt (int (include "llm-tool-gateway.maxReplicas" .)) 1) (gt $workers 1) }}
{{- fail "more than one gateway replica or worker needs Redis for mixed-turn continuations: keep redis.enabled, or set redis.url or redis.urlSecret" }}
{{- else }}
{{- $_ := set $config "state" (dict "backend" "memory") }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Environment variables read from Secrets, for the ${VAR} references in gateway.yaml. */}}
{{- define "llm-tool-gateway.secretEnv" -}}
{{- range $index, $key := .Values.auth.apiKeys }}
- name: {{ printf "GATEWAY_API_KEY_%d" $index }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "auth.apiKeys[%d].secret.name is required" $index) $key.secret.name }}
      key: {{ required (printf "auth.apiKeys[%d].secret.key is required" $index) $key.secret.key }}
{{- end }}
{{- range $index, $upstream := .Values.config.upstreams }}
{{- if and $upstream.apiKeySecret $upstream.apiKeySecret.name }}
- name: {{ printf "UPSTREAM_API_KEY_%d" $index }}
  valueFrom:
    secretKeyRef:
      name: {{ $upstream.apiKeySecret.name }}
      key: {{ required (printf "upstream %s: apiKeySecret.key is required" $upstream.name) $upstream.apiKeySecret.key }}
{{- end }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.auth.existingSecret.name }}
- name: GATEWAY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.auth.existingSecret.name }}
      key: {{ required "redis.auth.existingSecret.key is required" .Values.redis.auth.existingSecret.key }}
{{- else if and (not .Values.redis.enabled) .Values.redis.urlSecret.name }}
- name: GATEWAY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.urlSecret.name }}
      key: {{ required "redis.urlSecret.key is required" .Values.redis.urlSecret.key }}
{{- end }}
{{- range .Values.extraSecretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret.name }}
      key: {{ .secret.key }}
{{- end }}
{{- end }}
