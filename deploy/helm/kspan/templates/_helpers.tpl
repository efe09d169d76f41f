{{/* Chart name, truncated to a valid label. */}}
{{- define "kspan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release already contains it. */}}
{{- define "kspan.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kspan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kspan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kspan.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kspan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kspan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kspan.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the OTLP endpoint and headers. */}}
{{- define "kspan.otlpSecretName" -}}
{{- default (printf "%s-otlp" (include "kspan.fullname" .)) .Values.otlp.existingSecret -}}
{{- end -}}

{{/* kspan's config.yaml: chart-managed keys over .Values.config. */}}
{{- define "kspan.config" -}}
{{- $managed := dict
  "select" (dict "all" (and .Values.selection.all (empty (concat .Values.selection.pids .Values.selection.exe))) "pids" .Values.selection.pids "exe" .Values.selection.exe "ports" .Values.selection.ports "namespaces" .Values.selection.namespaces "pod_labels" .Values.selection.podLabels)
  "outputs" (list "otlp")
  "telemetry" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port)))
  "kubernetes" (dict "enabled" .Values.kubernetes.enabled "max_pods" (int .Values.kubernetes.maxPods))
-}}
{{- if .Values.rules -}}
{{- $_ := set $managed "rules_file" "/etc/kspan/rules.yaml" -}}
{{- end -}}
{{- toYaml (merge $managed (deepCopy .Values.config)) -}}
{{- end -}}
