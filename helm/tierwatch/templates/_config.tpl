{{/*
The agent configuration each workload gets, built as data and rendered with toYaml so that only keys
of the agent's config model come out. Values use the agent's own key names (snake_case) for config
fields; the few chart-only keys (password, passwordKey, dsnKey, urlKey) are camelCase and are removed
before rendering.
*/}}

{{/* Where the cluster agent finds the keys of the Secret. */}}
{{- define "tierwatch.secretDir" -}}
/etc/tierwatch/secrets
{{- end }}

{{/*
`config` merged with one agent's own `config`. Collector sections are the chart's business (it decides
which agent runs which collector), and `listen` comes from the port values, so both are refused here.
Call with (dict "root" $ "extra" .Values.nodeAgent.config "where" "nodeAgent.config").
*/}}
{{- define "tierwatch.sharedConfig" -}}
{{- $blocks := dict "config" (.root.Values.config | default dict) .where (.extra | default dict) }}
{{- range $where, $block := $blocks }}
{{- range $key := list "listen" "host" "postgres" "pgbouncer" "redis" "app" "kubernetes" }}
{{- if hasKey $block $key }}
{{- fail (printf "%s.%s: not allowed here; the chart sets %s (targets go under clusterAgent.*, the port under nodeAgent.port / clusterAgent.port)" $where $key $key) }}
{{- end }}
{{- end }}
{{- range $url := dig "alertmanager" "urls" list $block }}
{{- if regexMatch `://[^/@\s]*:[^@\s]*@` (toString $url) }}
{{- fail (printf "%s.alertmanager.urls: a URL holds a password, which would land in the ConfigMap; the chart keeps no Alertmanager credentials in its Secret, so give a URL without them" $where) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (mergeOverwrite (deepCopy (.root.Values.config | default dict)) (deepCopy (.extra | default dict))) }}
{{- end }}

{{/*
Node agent: the host collector only, reading the node's /proc and /sys where the DaemonSet mounts them.
host.name is not here: it comes from the node name through TIERWATCH_HOST__NAME.
cgroupfs is the container's own /sys/fs/cgroup, not the node's: with cgroup v2 the container has its
own cgroup namespace, so /proc/self/cgroup names its cgroup as "/", which is the root of the
container's cgroup mount but would be the node's root cgroup under /host/sys/fs/cgroup. On cgroup v1
the runtime mounts the container's own cgroup at each hierarchy's root, which the agent reads when the
path /proc/self/cgroup names is not under it.
*/}}
{{- define "tierwatch.nodeConfig" -}}
{{- $config := include "tierwatch.sharedConfig" (dict "root" . "extra" .Values.nodeAgent.config "where" "nodeAgent.config") | fromYaml }}
{{- $_ := set $config "host" (dict "enabled" true "procfs" "/host/proc" "sysfs" "/host/sys" "cgroupfs" "/sys/fs/cgroup") }}
{{- toYaml $config }}
{{- end }}

{{/*
Cluster agent: everything the Deployment needs, as YAML of a map with
  config  the agent configuration (passwords replaced by password_file paths),
  items   the Secret keys to mount as files under tierwatch.secretDir (the passwords),
  env     [{name, key}]: environment variables read from Secret keys (whole DSNs or URLs),
  data    the keys and values of the Secret the chart makes (empty when secret.existingSecret is set).

Secrets, per postgres / pgbouncer / redis entry:
  password     the password itself, kept in the chart's Secret under "<section>-<name>-password";
               ignored when secret.existingSecret is set (then that Secret must hold the key).
  passwordKey  the Secret key of the password; mounted as a file and given to the agent as password_file.
  dsnKey/urlKey  the Secret key of a whole DSN (postgres, pgbouncer) or URL (redis) that contains a
               password; passed as TIERWATCH_<SECTION>__<NAME>__DSN (or __URL) from a secretKeyRef,
               because the agent reads DSNs from the config or the environment, not from files.
App entries have no password field, but their metrics_url may carry user:password@ (the agent sends it
as basic auth): metricsUrlKey names the Secret key of such a URL, passed as
TIERWATCH_APP__<NAME>__METRICS_URL the same way.
A plain dsn/url/metrics_url that carries a password is refused, so no password can end up in the
ConfigMap.
*/}}
{{- define "tierwatch.clusterPlan" -}}
{{- $values := .Values.clusterAgent }}
{{- $existing := .Values.secret.existingSecret }}
{{- $secretData := .Values.secret.data | default dict }}
{{- $secretDir := include "tierwatch.secretDir" . }}
{{- $config := include "tierwatch.sharedConfig" (dict "root" . "extra" $values.config "where" "clusterAgent.config") | fromYaml }}
{{- $_ := set $config "host" (dict "enabled" false) }}
{{- $items := list }}
{{- $env := list }}
{{- $data := dict }}
{{- if not $existing }}
{{- range $key, $value := $secretData }}
{{- $_ := set $data $key (toString $value) }}
{{- end }}
{{- end }}
{{- $connFields := dict "postgres" "dsn" "pgbouncer" "dsn" "redis" "url" "app" "metrics_url" }}
{{- $connKeyFields := dict "postgres" "dsnKey" "pgbouncer" "dsnKey" "redis" "urlKey" "app" "metricsUrlKey" }}
{{- range $section := list "postgres" "pgbouncer" "redis" "app" }}
{{- $connField := get $connFields $section }}
{{- $connKeyField := get $connKeyFields $section }}
{{- $hasPassword := ne $section "app" }}
{{- $entries := list }}
{{- range $i, $entry := index $values $section | default list }}
{{- $where := printf "clusterAgent.%s[%d]" $section $i }}
{{- $name := required (printf "%s.name is required" $where) $entry.name | toString }}
{{- $out := omit $entry $connKeyField }}
{{- if $hasPassword }}
{{- $out = omit $out "password" "passwordKey" }}
{{- end }}
{{- $connKey := index $entry $connKeyField | default "" | toString }}
{{- $conn := index $entry $connField | default "" | toString }}
{{- if and (or $connKey $entry.password) (not (regexMatch `^[A-Za-z0-9_.-]+$` $name)) }}
{{- fail (printf "%s: name %q: a name used for a Secret key or an environment variable may only hold letters, digits, '_', '.' and '-'" $where $name) }}
{{- end }}
{{- if $connKey }}
{{- if $conn }}
{{- fail (printf "%s: set %s or %s, not both" $where $connField $connKeyField) }}
{{- end }}
{{- $env = append $env (dict "name" (printf "TIERWATCH_%s__%s__%s" (upper $section) ($name | upper | replace "-" "_") (upper $connField)) "key" $connKey) }}
{{- if and (not $existing) (not (hasKey $data $connKey)) }}
{{- fail (printf "%s: %s %q is not a key of secret.data (or set secret.existingSecret)" $where $connKeyField $connKey) }}
{{- end }}
{{- else }}
{{- if and (has $section (list "postgres" "pgbouncer")) (not $conn) }}
{{- fail (printf "%s: set %s, or %s to read it from the Secret" $where $connField $connKeyField) }}
{{- end }}
{{- if regexMatch `://[^/@\s]*:[^@\s]*@|(?i:(^|[\s?&])password\s*=)` $conn }}
{{- fail (printf "%s: the %s holds a password; the chart keeps passwords out of the ConfigMap: %sput the whole %s in the Secret and set %s" $where $connField (ternary "use password/passwordKey, or " "" $hasPassword) $connField $connKeyField) }}
{{- end }}
{{- end }}
{{- if $hasPassword }}
{{- $passwordKey := $entry.passwordKey | default "" | toString }}
{{- if and (not $passwordKey) $entry.password }}
{{- $passwordKey = printf "%s-%s-password" $section $name }}
{{- end }}
{{- if $passwordKey }}
{{- if $entry.password_file }}
{{- fail (printf "%s: set password_file or password/passwordKey, not both" $where) }}
{{- end }}
{{- $_ := set $out "password_file" (printf "%s/%s" $secretDir $passwordKey) }}
{{- $items = append $items $passwordKey }}
{{- if not $existing }}
{{- if $entry.password }}
{{- $_ := set $data $passwordKey (toString $entry.password) }}
{{- else if not (hasKey $data $passwordKey) }}
{{- fail (printf "%s: passwordKey %q is not a key of secret.data (or set secret.existingSecret)" $where $passwordKey) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $entries = append $entries $out }}
{{- end }}
{{- if $entries }}
{{- $_ := set $config $section $entries }}
{{- end }}
{{- end }}
{{- $kubernetes := deepCopy ($values.kubernetes | default dict) }}
{{- if not $kubernetes.namespace }}
{{- $_ := set $kubernetes "namespace" .Release.Namespace }}
{{- end }}
{{- $_ := set $config "kubernetes" $kubernetes }}
{{- toYaml (dict "config" $config "items" (uniq $items | sortAlpha) "env" $env "data" $data) }}
{{- end }}

{{/* The namespace whose HPAs, Deployments, ReplicaSets and pods the cluster agent reads. */}}
{{- define "tierwatch.watchedNamespace" -}}
{{- .Values.clusterAgent.kubernetes.namespace | default .Release.Namespace }}
{{- end }}

{{/* Whether the cluster agent talks to the Kubernetes API (and so needs its token and RBAC). */}}
{{- define "tierwatch.clusterAgentUsesApi" -}}
{{- if and .Values.clusterAgent.enabled .Values.clusterAgent.kubernetes.enabled }}true{{ end }}
{{- end }}
