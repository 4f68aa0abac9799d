{{- define "sfumato.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sfumato.fullname" -}}
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

{{- define "sfumato.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sfumato.baseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "sfumato.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object, without a component. */}}
{{- define "sfumato.commonLabels" -}}
helm.sh/chart: {{ include "sfumato.chart" . }}
{{ include "sfumato.baseSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The media pods (DaemonSet/StatefulSet) and what selects them. */}}
{{- define "sfumato.selectorLabels" -}}
{{ include "sfumato.baseSelectorLabels" . }}
app.kubernetes.io/component: media
{{- end }}

{{- define "sfumato.labels" -}}
{{ include "sfumato.commonLabels" . }}
app.kubernetes.io/component: media
{{- end }}

{{- define "sfumato.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sfumato.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sfumato.secretName" -}}
{{- default (include "sfumato.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "sfumato.seedsService" -}}
{{- printf "%s-seeds" (include "sfumato.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sfumato.natsName" -}}
{{- printf "%s-nats" (include "sfumato.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sfumato.natsUrl" -}}
{{- if .Values.config.natsUrl }}
{{- .Values.config.natsUrl }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:%d" (include "sfumato.natsName" .) .Release.Namespace (int .Values.nats.port) }}
{{- end }}
{{- end }}

{{/* Seeds for cluster mode: this release's headless Service, then cluster.extraSeeds. */}}
{{- define "sfumato.seeds" -}}
{{- $seeds := list (printf "%s.%s.svc:%d" (include "sfumato.seedsService" .) .Release.Namespace (int .Values.cluster.quicPort)) }}
{{- range .Values.cluster.extraSeeds }}
{{- $seeds = append $seeds . }}
{{- end }}
{{- join "," $seeds }}
{{- end }}

{{- define "sfumato.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
