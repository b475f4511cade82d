{{/*
tierwatch as a sidecar container in an application's pod (see SIDECAR.md). This chart never renders
it by itself: a chart that depends on tierwatch includes it in its own pod template:

  containers:
    - name: api
      ...
    {{- include "tierwatch.sidecar" (dict
          "image" "registry.example.com/tierwatch:0.1.0"
          "app" (list (dict "name" "api" "metrics_url" "http://127.0.0.1:8000/metrics"))) | nindent 4 }}

Parameters (a dict):
  image      required: the tierwatch image.
  app        the agent's `app` entries: name plus metrics_url (the app's /metrics on localhost),
             requests_metric, latency_metric, pool_size, hpa.
  config     more agent config, e.g. (dict "interval" 10 "alertmanager" (dict "urls" (list "http://am:9093"))).
  port       HTTP port of the sidecar (default 10090); must not clash with the app's ports.
  name       container name (default "tierwatch").
  resources  requests and limits (default: small, with a memory limit and a CPU limit).
  readiness  true adds a readiness probe on /readyz. Off by default: a sidecar's readiness gates the
             whole pod, and a monitor should never take the app it watches out of service.
  logLevel   default INFO.
  pullPolicy default IfNotPresent.

The sidecar has no config file: it runs with an empty one (/dev/null, which also turns off the
auto-detection of local databases) and gets every setting from TIERWATCH_* environment variables.
Lists and maps go in as JSON, which the agent reads as YAML flow syntax. The host collector uses the
container's /proc and its own cgroup; host.name is the pod name.
*/}}
{{- define "tierwatch.sidecar" -}}
{{- $image := required "tierwatch.sidecar: image is required" .image }}
{{- $port := .port | default 10090 }}
{{- $config := deepCopy (.config | default dict) }}
{{- range $key := list "listen" "app" }}
{{- if hasKey $config $key }}
{{- fail (printf "tierwatch.sidecar: config.%s is not allowed; use the %s parameter" $key (ternary "port" "app" (eq $key "listen"))) }}
{{- end }}
{{- end }}
{{- if .app }}
{{- $_ := set $config "app" .app }}
{{- end }}
- name: {{ .name | default "tierwatch" }}
  image: {{ $image }}
  imagePullPolicy: {{ .pullPolicy | default "IfNotPresent" }}
  args:
    - run
    - --config
    - /dev/null
    - --listen
    - {{ printf "0.0.0.0:%v" $port | quote }}
  env:
    - name: TIERWATCH_HOST__NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: TIERWATCH_LOG_LEVEL
      value: {{ .logLevel | default "INFO" | quote }}
    {{- include "tierwatch.runtimeEnv" . | nindent 4 }}
    {{- range $key := keys $config | sortAlpha }}
    {{- $value := index $config $key }}
    - name: {{ printf "TIERWATCH_%s" (upper $key) }}
      value: {{ ternary (toJson $value) (toString $value) (or (kindIs "map" $value) (kindIs "slice" $value)) | quote }}
    {{- end }}
  ports:
    - name: tierwatch
      containerPort: {{ $port }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: tierwatch
    periodSeconds: 20
    timeoutSeconds: 5
    failureThreshold: 3
  {{- if .readiness }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: tierwatch
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 3
  {{- end }}
  resources:
    {{- toYaml (.resources | default (dict "requests" (dict "cpu" "10m" "memory" "48Mi") "limits" (dict "cpu" "100m" "memory" "96Mi"))) | nindent 4 }}
  securityContext:
    {{- include "tierwatch.containerSecurityContext" . | nindent 4 }}
{{- end }}
