{{/*
Internal helpers. Each takes this chart's context (Values, Release, Chart): `.` inside this
chart's own templates, or `.Subcharts.<name>` when an app chart includes the inject templates
(_inject.tpl), so names, labels and values are the same either way.
*/}}

{{- define "stigg-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stigg-sidecar.fullname" -}}
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

{{- define "stigg-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stigg-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stigg-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stigg-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ include "stigg-sidecar.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: entitlements-sidecar
app.kubernetes.io/part-of: stigg-sidecar
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "stigg-sidecar.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString }}
{{- end }}

{{- define "stigg-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "stigg-sidecar.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The label that pods running the injected sidecar carry, for the PodMonitor. */}}
{{- define "stigg-sidecar.injectedLabel" -}}
stigg-sidecar/instance: {{ .Release.Name }}
{{- end }}

{{/* true when this chart creates a Secret: some secret is given as a value. */}}
{{- define "stigg-sidecar.createsSecret" -}}
{{- range $s := list .Values.stigg.apiKey .Values.redis.url .Values.auth.token }}
{{- if and $s.value (not $s.existingSecret) }}true{{ end }}
{{- end }}
{{- end }}

{{/* secretKeyRef for one of the secrets: (dict "ctx" $ctx "secret" .Values.stigg.apiKey) */}}
{{- define "stigg-sidecar.secretKeyRef" -}}
secretKeyRef:
  name: {{ .secret.existingSecret | default (include "stigg-sidecar.fullname" .ctx) }}
  key: {{ .secret.key }}
{{- end }}

{{- define "stigg-sidecar.hasSecret" -}}
{{- if or .existingSecret .value }}true{{ end }}
{{- end }}

{{/* Checks that render nothing, or stop the render with one line saying what to set. */}}
{{- define "stigg-sidecar.validate" -}}
{{- $v := .Values }}
{{- if not (has $v.mode (list "standalone" "inject")) }}
{{- fail (printf "stigg-sidecar: mode must be standalone or inject, got %q" $v.mode) }}
{{- end }}
{{- range $name, $s := dict "stigg.apiKey" $v.stigg.apiKey "redis.url" $v.redis.url "auth.token" $v.auth.token }}
{{- if and $s.existingSecret $s.value }}
{{- fail (printf "stigg-sidecar: %s: set existingSecret or value, not both" $name) }}
{{- end }}
{{- end }}
{{- if not (include "stigg-sidecar.hasSecret" $v.stigg.apiKey) }}
{{- fail "stigg-sidecar: stigg.apiKey: set existingSecret (a Secret holding your Stigg server API key; recommended) or value" }}
{{- end }}
{{- if eq $v.mode "standalone" }}
{{- if and (not (include "stigg-sidecar.hasSecret" $v.auth.token)) (not $v.standalone.allowUnauthenticated) }}
{{- fail "stigg-sidecar: standalone mode serves the API to the whole namespace: set auth.token.existingSecret (or auth.token.value) to require a bearer token, or standalone.allowUnauthenticated=true if a NetworkPolicy restricts access" }}
{{- end }}
{{- if $v.unixSocket.enabled }}
{{- fail "stigg-sidecar: unixSocket.enabled needs mode=inject: a Unix socket is only reachable inside the pod" }}
{{- end }}
{{- else }}
{{- if $v.metrics.serviceMonitor.enabled }}
{{- fail "stigg-sidecar: metrics.serviceMonitor needs mode=standalone (there is no Service in inject mode); use metrics.podMonitor" }}
{{- end }}
{{- end }}
{{- $ports := list $v.ports.http $v.ports.management $v.ports.mcp $v.ports.grpc }}
{{- if ne (len ($ports | uniq)) 4 }}
{{- fail (printf "stigg-sidecar: ports.http, ports.management, ports.mcp and ports.grpc must differ, got %v" $ports) }}
{{- end }}
{{- if and $v.probes.grpc (not $v.grpc.enabled) }}
{{- fail "stigg-sidecar: probes.grpc needs grpc.enabled" }}
{{- end }}
{{- $r := $v.redis }}
{{- $redis := or (include "stigg-sidecar.hasSecret" $r.url) $r.sentinel.hosts }}
{{- if and $r.sentinel.hosts (include "stigg-sidecar.hasSecret" $r.url) }}
{{- fail "stigg-sidecar: redis.sentinel.hosts: set it or redis.url, not both" }}
{{- end }}
{{- if and $r.cluster $r.sentinel.hosts }}
{{- fail "stigg-sidecar: redis.cluster: needs a redis:// or rediss:// seed URL in redis.url, not redis.sentinel" }}
{{- end }}
{{- if and $r.cluster $r.minReplicasAck }}
{{- fail "stigg-sidecar: redis.minReplicasAck: not supported with redis.cluster; set it to 0" }}
{{- end }}
{{- if and (or $r.cluster $r.minReplicasAck $r.tls.existingSecret $r.credentials.existingSecret) (not $redis) }}
{{- fail "stigg-sidecar: redis: set redis.url or redis.sentinel.hosts to use Redis" }}
{{- end }}
{{- if ne (not $r.tls.certKey) (not $r.tls.keyKey) }}
{{- fail "stigg-sidecar: redis.tls.certKey: set together with redis.tls.keyKey (mutual TLS)" }}
{{- end }}
{{- end }}

{{/* Pod annotations that restart the pods when the config or a created Secret changes. */}}
{{- define "stigg-sidecar.checksumAnnotations" -}}
checksum/stigg-sidecar-config: {{ toYaml .Values.config | sha256sum }}
{{- if include "stigg-sidecar.createsSecret" . }}
checksum/stigg-sidecar-secret: {{ list .Values.stigg.apiKey.value .Values.redis.url.value .Values.auth.token.value | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/* One probe: HTTP on the management port, or (probes.grpc) gRPC health on the gRPC port. */}}
{{- define "stigg-sidecar.httpProbe" -}}
{{- $probe := .probe -}}
{{- $v := .values -}}
{{- if $v.probes.grpc }}
grpc:
  port: {{ $v.ports.grpc }}
{{- else }}
httpGet:
  path: {{ $probe.path }}
  port: {{ $v.ports.management }}
  scheme: HTTP
{{- end }}
{{- toYaml (omit $probe "enabled" "path") | nindent 0 }}
{{- end }}

{{/*
The sidecar container, as one list item.
(dict "ctx" <chart context> "kind" "native"|"classic"|"standalone")
*/}}
{{- define "stigg-sidecar.container" -}}
{{- $c := .ctx }}
{{- $v := $c.Values }}
{{- $kind := .kind -}}
- name: {{ $v.inject.containerName | default "stigg-sidecar" }}
  image: {{ include "stigg-sidecar.image" $c | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if eq $kind "native" }}
  # A native sidecar: starts before the app's containers and stops after them.
  restartPolicy: Always
  {{- end }}
  env:
    - name: SIDECAR_CONFIG
      value: /etc/stigg-sidecar/sidecar.yaml
    - name: SIDECAR_DATA_DIR
      value: {{ $v.storage.data.mountPath | quote }}
    - name: SIDECAR_SERVER_HOST
      value: {{ ternary "0.0.0.0" "127.0.0.1" (eq $kind "standalone") | quote }}
    - name: SIDECAR_SERVER_PORT
      value: {{ $v.ports.http | quote }}
    - name: SIDECAR_MANAGEMENT_PORT
      value: {{ $v.ports.management | quote }}
    - name: SIDECAR_MCP_PORT
      value: {{ $v.ports.mcp | quote }}
    - name: SIDECAR_GRPC_ENABLED
      value: {{ $v.grpc.enabled | quote }}
    {{- if $v.grpc.enabled }}
    - name: SIDECAR_GRPC_HOST
      value: {{ ternary "0.0.0.0" "127.0.0.1" (or (eq $kind "standalone") $v.probes.grpc) | quote }}
    - name: SIDECAR_GRPC_PORT
      value: {{ $v.ports.grpc | quote }}
    {{- end }}
    {{- if $v.unixSocket.enabled }}
    - name: SIDECAR_SERVER_UNIX_SOCKET
      value: {{ printf "%s/%s" $v.unixSocket.directory $v.unixSocket.fileName | quote }}
    {{- end }}
    {{- with $v.stigg.apiUrl }}
    - name: STIGG_API_URL
      value: {{ . | quote }}
    {{- end }}
    - name: STIGG_API_KEY
      valueFrom:
        {{- include "stigg-sidecar.secretKeyRef" (dict "ctx" $c "secret" $v.stigg.apiKey) | nindent 8 }}
    {{- if include "stigg-sidecar.hasSecret" $v.redis.url }}
    - name: SIDECAR_REDIS_URL
      valueFrom:
        {{- include "stigg-sidecar.secretKeyRef" (dict "ctx" $c "secret" $v.redis.url) | nindent 8 }}
    {{- end }}
    {{- with include "stigg-sidecar.redisEnv" $c }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- if include "stigg-sidecar.hasSecret" $v.auth.token }}
    - name: SIDECAR_AUTH_TOKEN
      valueFrom:
        {{- include "stigg-sidecar.secretKeyRef" (dict "ctx" $c "secret" $v.auth.token) | nindent 8 }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if eq $kind "standalone" }}
    - name: stigg-http
      containerPort: {{ $v.ports.http }}
      protocol: TCP
    {{- end }}
    - name: stigg-mgmt
      containerPort: {{ $v.ports.management }}
      protocol: TCP
    {{- if $v.grpc.enabled }}
    - name: stigg-grpc
      containerPort: {{ $v.ports.grpc }}
      protocol: TCP
    {{- end }}
  {{- with $v.probes }}
  {{- if .startup.enabled }}
  startupProbe:
    {{- include "stigg-sidecar.httpProbe" (dict "probe" .startup "values" $v) | nindent 4 }}
  {{- end }}
  {{- if .liveness.enabled }}
  livenessProbe:
    {{- include "stigg-sidecar.httpProbe" (dict "probe" .liveness "values" $v) | nindent 4 }}
  {{- end }}
  {{- if .readiness.enabled }}
  readinessProbe:
    {{- include "stigg-sidecar.httpProbe" (dict "probe" .readiness "values" $v) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- $sleep := ternary $v.standalone.preStopSleepSeconds $v.inject.preStopSleepSeconds (eq $kind "standalone") }}
  {{- if and (ne $kind "native") $sleep }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", {{ $sleep | quote }}]
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: stigg-sidecar-config
      mountPath: /etc/stigg-sidecar
      readOnly: true
    - name: stigg-sidecar-data
      mountPath: {{ $v.storage.data.mountPath }}
    - name: stigg-sidecar-tmp
      mountPath: /tmp
    {{- if $v.unixSocket.enabled }}
    - name: stigg-sidecar-run
      mountPath: {{ $v.unixSocket.directory }}
    {{- end }}
    {{- if $v.redis.tls.existingSecret }}
    - name: stigg-sidecar-redis-tls
      mountPath: {{ include "stigg-sidecar.redisTlsDir" $c }}
      readOnly: true
    {{- end }}
    {{- if $v.redis.credentials.existingSecret }}
    - name: stigg-sidecar-redis-auth
      mountPath: {{ include "stigg-sidecar.redisAuthDir" $c }}
      readOnly: true
    {{- end }}
{{- end }}

{{- define "stigg-sidecar.redisTlsDir" -}}
/var/run/secrets/stigg-sidecar/redis-tls
{{- end }}

{{- define "stigg-sidecar.redisAuthDir" -}}
/var/run/secrets/stigg-sidecar/redis-auth
{{- end }}

{{/* Redis beyond the URL: the sentinel URL, Cluster, replica acks, TLS and ACL files. */}}
{{- define "stigg-sidecar.redisEnv" -}}
{{- $r := .Values.redis -}}
{{- with $r.sentinel.hosts }}
- name: SIDECAR_REDIS_URL
  value: {{ printf "%s://%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" $r.sentinel.tls) (join "," .) $r.sentinel.service (int $r.sentinel.db) | quote }}
{{- end }}
{{- if $r.cluster }}
- name: SIDECAR_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- if $r.minReplicasAck }}
- name: SIDECAR_REDIS_MIN_REPLICAS_ACK
  value: {{ $r.minReplicasAck | quote }}
{{- end }}
{{- if $r.tls.existingSecret }}
{{- $dir := include "stigg-sidecar.redisTlsDir" . }}
{{- with $r.tls.caKey }}
- name: SIDECAR_REDIS_CA_FILE
  value: {{ printf "%s/%s" $dir . | quote }}
{{- end }}
{{- if $r.tls.certKey }}
- name: SIDECAR_REDIS_CERT_FILE
  value: {{ printf "%s/%s" $dir $r.tls.certKey | quote }}
- name: SIDECAR_REDIS_KEY_FILE
  value: {{ printf "%s/%s" $dir $r.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- if $r.credentials.existingSecret }}
{{- $dir := include "stigg-sidecar.redisAuthDir" . }}
{{- with $r.credentials.usernameKey }}
- name: SIDECAR_REDIS_USERNAME_FILE
  value: {{ printf "%s/%s" $dir . | quote }}
{{- end }}
- name: SIDECAR_REDIS_PASSWORD_FILE
  value: {{ printf "%s/%s" $dir $r.credentials.passwordKey | quote }}
{{- end }}
{{- end }}

{{/* The pod volumes the sidecar container mounts, as list items. */}}
{{- define "stigg-sidecar.podVolumes" -}}
{{- $v := .Values -}}
- name: stigg-sidecar-config
  configMap:
    name: {{ include "stigg-sidecar.fullname" . }}
- name: stigg-sidecar-data
  emptyDir: {{ with $v.storage.data.sizeLimit }}{{ dict "sizeLimit" . | toJson }}{{ else }}{}{{ end }}
- name: stigg-sidecar-tmp
  emptyDir: {{ with $v.storage.tmp.sizeLimit }}{{ dict "sizeLimit" . | toJson }}{{ else }}{}{{ end }}
{{- if $v.unixSocket.enabled }}
- name: stigg-sidecar-run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- with $v.redis.tls.existingSecret }}
- name: stigg-sidecar-redis-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with $v.redis.credentials.existingSecret }}
- name: stigg-sidecar-redis-auth
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "stigg-sidecar.serviceAccountName" -}}
{{- if .Values.standalone.serviceAccount.create }}
{{- .Values.standalone.serviceAccount.name | default (include "stigg-sidecar.fullname" .) }}
{{- else }}
{{- .Values.standalone.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}
