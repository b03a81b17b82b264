{{/*
Names and labels shared by every object of the release.
*/}}
{{- define "recsys-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: "<release>-recsys-operator", or just the release name when it already
says recsys-operator. 63 characters at most (a label value and a DNS name).
*/}}
{{- define "recsys-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "recsys-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recsys-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "recsys-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "recsys-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: recsys-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "recsys-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "recsys-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the existing ServiceAccount the operator runs as" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
A workload image: workloadImages.<key> when set, else recsys-<name> beside the operator's
image (image.repository's directory) with the operator's tag; exactly what `make images`
tags. Called with (list $ key name).
*/}}
{{- define "recsys-operator.workloadImage" -}}
{{- $root := index . 0 -}}
{{- $set := index $root.Values.workloadImages (index . 1) -}}
{{- if $set }}
{{- $set }}
{{- else }}
{{- printf "%s/recsys-%s:%s" (dir $root.Values.image.repository) (index . 2) (default $root.Chart.AppVersion $root.Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "recsys-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}
