{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "streamworker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamworker.fullname" -}}
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

{{/* Name of one role's objects: <fullname>-worker, -scheduler, -api. */}}
{{- define "streamworker.componentName" -}}
{{- printf "%s-%s" (include "streamworker.fullname" .root | trunc 52 | trimSuffix "-") .component }}
{{- end }}

{{- define "streamworker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "streamworker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one role; call with (dict "root" $ "component" "worker"). */}}
{{- define "streamworker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamworker.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "streamworker.componentLabels" -}}
{{ include "streamworker.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "streamworker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamworker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamworker.secretName" -}}
{{- default (include "streamworker.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "streamworker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Stream name of a priority, as streamworker/keyspace.py builds it. */}}
{{- define "streamworker.stream" -}}
{{- printf "%s%s_priority_tasks" (toString (default "" .root.Values.config.STREAMWORKER_PREFIX)) .priority }}
{{- end }}

{{/*
The grace period must outlast SHUTDOWN_GRACE_SECONDS, or the kubelet SIGKILLs handlers
the service promised to let finish. Call with (dict "root" $ "role" "worker" "grace" N).
*/}}
{{- define "streamworker.checkGrace" -}}
{{- $shutdown := float64 (default 25 .root.Values.config.SHUTDOWN_GRACE_SECONDS) }}
{{- if le (float64 .grace) $shutdown }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be larger than config.SHUTDOWN_GRACE_SECONDS (%v): in-flight handlers get SHUTDOWN_GRACE_SECONDS after SIGTERM and the pod needs time to exit before SIGKILL" .role .grace .root.Values.config.SHUTDOWN_GRACE_SECONDS) }}
{{- end }}
{{- end }}

{{/*
Environment shared by every role: settings, secrets, the pod's own name. Call with
(dict "root" $ "required" (list "REDIS_URL" ...)): a required key missing from the Secret
keeps the pod from starting (CreateContainerConfigError) instead of starting it half set up.
*/}}
{{- define "streamworker.env" -}}
- name: STREAMWORKER_CONSUMER
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- $secret := include "streamworker.secretName" .root }}
{{- $required := .required }}
{{- range $var, $key := .root.Values.secrets.keys }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: {{ not (has $var $required) }}
{{- end }}
{{- if .root.Values.scheduler.schedules }}
- name: SCHEDULES_FILE
  value: /etc/streamworker/schedules.yaml
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "streamworker.envFrom" -}}
- configMapRef:
    name: {{ include "streamworker.fullname" . }}
{{- end }}

{{- define "streamworker.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.scheduler.schedules }}
- name: schedules
  configMap:
    name: {{ include "streamworker.fullname" . }}-schedules
{{- end }}
{{- end }}

{{- define "streamworker.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.scheduler.schedules }}
- name: schedules
  mountPath: /etc/streamworker
  readOnly: true
{{- end }}
{{- end }}

{{/* An httpGet probe from a values block; call with (dict "probe" $p "port" "metrics"). */}}
{{- define "streamworker.httpProbe" -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* Topology spread constraints with this role's selector filled in. */}}
{{- define "streamworker.topologySpread" -}}
{{- $selector := include "streamworker.selectorLabels" . | fromYaml }}
{{- $out := list }}
{{- range .constraints }}
{{- $out = append $out (merge (dict "labelSelector" (dict "matchLabels" $selector)) .) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Which autoscaler the worker gets: "keda", "hpa" or "" (none). */}}
{{- define "streamworker.autoscaler" -}}
{{- $as := .Values.worker.autoscaling }}
{{- if and .Values.worker.enabled $as.enabled }}
{{- if eq $as.engine "keda" }}keda
{{- else if eq $as.engine "hpa" }}hpa
{{- else if .Capabilities.APIVersions.Has "keda.sh/v1alpha1" }}keda
{{- else }}hpa
{{- end }}
{{- end }}
{{- end }}

{{/*
A value as the plain string a program parses: Helm reads YAML numbers as float64, and
printing 1048576 as a float gives "1.048576e+06", which no integer parser accepts.
*/}}
{{- define "streamworker.scalar" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}
