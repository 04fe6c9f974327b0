{{/*
Named templates for app charts that inject the sidecar into their pods.

Add this chart as a dependency of your chart, set `stigg-sidecar.mode: inject` in your values,
and include these in your pod template, passing your chart's root context `$`:

    spec:
      template:
        metadata:
          labels:
            {{- include "stigg-sidecar.podLabels" $ | nindent 12 }}
          annotations:
            {{- include "stigg-sidecar.podAnnotations" $ | nindent 12 }}
        spec:
          terminationGracePeriodSeconds: 30   # or more: the sidecar flushes usage on SIGTERM
          initContainers:
            {{- include "stigg-sidecar.initContainers" $ | nindent 12 }}
          containers:
            - name: app
              env:
                {{- include "stigg-sidecar.appEnv" $ | nindent 16 }}
              volumeMounts:
                {{- include "stigg-sidecar.appVolumeMounts" $ | nindent 16 }}
            {{- include "stigg-sidecar.containers" $ | nindent 12 }}
          volumes:
            {{- include "stigg-sidecar.volumes" $ | nindent 12 }}

"stigg-sidecar.initContainers" renders the sidecar when inject.type is native (Kubernetes
>= 1.29), "stigg-sidecar.containers" when it is classic; the other renders nothing, so both
lines can stay. With the dependency aliased, pass (dict "root" $ "name" "<alias>").
To turn the sidecar off, set `stigg-sidecar.enabled: false`: every template then renders
nothing. Do not give the dependency a `condition`: Helm would not load these templates at all.
*/}}

{{/* Sets "sc" in the given dict to the sidecar chart's context, when it is enabled. */}}
{{- define "stigg-sidecar.resolve" -}}
{{- $arg := index . 0 }}
{{- $out := index . 1 }}
{{- $root := $arg }}
{{- $name := "stigg-sidecar" }}
{{- if and (kindIs "map" $arg) (hasKey $arg "root") }}
{{- $root = $arg.root }}
{{- $name = $arg.name | default $name }}
{{- end }}
{{- $subcharts := $root.Subcharts | default dict }}
{{- if not (hasKey $subcharts $name) }}
{{- fail (printf "stigg-sidecar: this chart has no dependency named %q: add stigg-sidecar to Chart.yaml's dependencies (without a condition: use %s.enabled) and run `helm dependency update`; with an alias, pass (dict \"root\" $ \"name\" \"<alias>\")" $name $name) }}
{{- end }}
{{- $sc := index $subcharts $name }}
{{- if $sc.Values.enabled }}
{{- if ne $sc.Values.mode "inject" }}
{{- fail (printf "stigg-sidecar: set %s.mode=inject in your chart's values to inject the sidecar into your pods (mode is %q, which deploys a standalone sidecar)" $name $sc.Values.mode) }}
{{- end }}
{{- $_ := set $out "sc" $sc }}
{{- end }}
{{- end }}

{{/* The sidecar as a native sidecar (an init container with restartPolicy Always). */}}
{{- define "stigg-sidecar.initContainers" -}}
{{- $r := dict }}
{{- $_ := include "stigg-sidecar.resolve" (list . $r) }}
{{- with $r.sc }}
{{- if eq .Values.inject.type "native" }}
{{- include "stigg-sidecar.container" (dict "ctx" . "kind" "native") }}
{{- end }}
{{- end }}
{{- end }}

{{/* The sidecar as a classic container, for clusters older than 1.29. */}}
{{- define "stigg-sidecar.containers" -}}
{{- $r := dict }}
{{- $_ := include "stigg-sidecar.resolve" (list . $r) }}
{{- with $r.sc }}
{{- if eq .Values.inject.type "classic" }}
{{- include "stigg-sidecar.container" (dict "ctx" . "kind" "classic") }}
{{- end }}
{{- end }}
{{- end }}

{{/* The volumes the sidecar mounts: config, spool, /tmp, and the socket directory. */}}
{{- define "stigg-sidecar.volumes" -}}
{{- $r := dict }}
{{- $_ := include "stigg-sidecar.resolve" (list . $r) }}
{{- with $r.sc }}
{{- include "stigg-sidecar.podVolumes" . }}
{{- end }}
{{- end }}

{{/* Labels for the app's pod template: the PodMonitor selects pods by them. */}}
{{- define "stigg-sidecar.podLabels" -}}
{{- $r := dict }}
{{- $_ := include "stigg-sidecar.resolve" (list . $r) }}
{{- with $r.sc }}
{{- include "stigg-sidecar.injectedLabel" . }}
{{- end }}
{{- end }}

{{/* Annotations for the app's pod template: roll the pods when the sidecar's config changes. */}}
{{- define "stigg-sidecar.podAnnotations" -}}
{{- $r := dict }}
{{- $_ := include "stigg-sidecar.resolve" (list . $r) }}
{{- with $r.sc }}
{{- include "stigg-sidecar.checksumAnnotations" . }}
{{- end }}
{{- end }}

{{/* Environment for the app container: where to reach the sidecar. */}}
{{- define "stigg-sidecar.appEnv" -}}
{{- $r := dict }}
{{- $_ := include "stigg-sidecar.resolve" (list . $r) }}
{{- with $r.sc -}}
- name: STIGG_SIDECAR_URL
  value: {{ printf "http://127.0.0.1:%v" .Values.ports.http | quote }}
{{- if .Values.grpc.enabled }}
# For Stigg's Sidecar SDK: Stigg(..., remote_sidecar_host="127.0.0.1", remote_sidecar_port=<this>).
- name: STIGG_SIDECAR_GRPC_PORT
  value: {{ .Values.ports.grpc | quote }}
{{- end }}
{{- if .Values.unixSocket.enabled }}
- name: STIGG_SIDECAR_SOCKET
  value: {{ printf "%s/%s" .Values.unixSocket.directory .Values.unixSocket.fileName | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volume mounts for the app container: the socket directory, when unixSocket is on. */}}
{{- define "stigg-sidecar.appVolumeMounts" -}}
{{- $r := dict }}
{{- $_ := include "stigg-sidecar.resolve" (list . $r) }}
{{- with $r.sc }}
{{- if .Values.unixSocket.enabled -}}
- name: stigg-sidecar-run
  mountPath: {{ .Values.unixSocket.directory }}
{{- end }}
{{- end }}
{{- end }}
