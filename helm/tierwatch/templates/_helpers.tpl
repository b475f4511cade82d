{{/*
Names, labels and the pieces every tierwatch pod shares.
*/}}

{{- define "tierwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tierwatch.fullname" -}}
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

{{/* Name of a per-agent object: the full name plus "-node" or "-cluster". Call with (dict "root" $ "suffix" "node"). */}}
{{- define "tierwatch.componentName" -}}
{{- printf "%s-%s" (include "tierwatch.fullname" .root | trunc 55 | trimSuffix "-") .suffix }}
{{- end }}

{{- define "tierwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tierwatch.labels" -}}
helm.sh/chart: {{ include "tierwatch.chart" . }}
app.kubernetes.io/name: {{ include "tierwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tierwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a per-agent object; call with (dict "root" $ "component" "node-agent"). */}}
{{- define "tierwatch.componentLabels" -}}
{{ include "tierwatch.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels shared by every pod of the release (Services and the ServiceMonitor select on these). */}}
{{- define "tierwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one agent; call with (dict "root" $ "component" "node-agent"). */}}
{{- define "tierwatch.componentSelectorLabels" -}}
{{ include "tierwatch.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tierwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tierwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tierwatch.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret that holds passwords and secret DSNs: the user's existing one, or the one this chart makes. */}}
{{- define "tierwatch.secretName" -}}
{{- default (include "tierwatch.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/*
Security settings every tierwatch pod and container gets. They are not values on purpose: the agent
needs no privilege beyond reading files, so there is nothing a user should have to loosen.
*/}}
{{- define "tierwatch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
fsGroup: 65534
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tierwatch.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Probes on the agent's HTTP port: /healthz answers while the process lives, /readyz once every target
finished its first cycle. Call with the port name.
*/}}
{{- define "tierwatch.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ . }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* `tierwatch run` with the mounted config, listening on every address of the pod. Call with the port. */}}
{{- define "tierwatch.args" -}}
- run
- --config
- /etc/tierwatch/config/tierwatch.yaml
- --listen
- {{ printf "0.0.0.0:%v" . | quote }}
{{- end }}

{{/*
Environment every tierwatch container gets, whatever image it runs (the Dockerfile sets the same):
- two malloc arenas. glibc's default of an arena per allocating thread (up to 8 per CPU) let the
  agent's RSS grow 4.7 MiB over a 10-minute soak; with two it stays within 2 MiB (benchmarks/soak.py).
- PYTHONOPTIMIZE=2: no docstrings or asserts in memory, 1.7 MiB less RSS with the bytecode the image
  compiles ahead, and 1.2 MiB less in an image that ships none.
*/}}
{{- define "tierwatch.runtimeEnv" -}}
- name: MALLOC_ARENA_MAX
  value: "2"
- name: PYTHONOPTIMIZE
  value: "2"
{{- end }}
