{{/*
Helpers of the monitoring objects (podmonitor.yaml, prometheusrule.yaml, grafana-dashboard.yaml).
*/}}

{{/*
The job label of a scraped part: "<release namespace>/<full name>[-<part>]", the form the
Prometheus Operator gives a PodMonitor's job by default, but fixed by relabeling so that the
ServiceMonitor and the PodMonitor of the operator give the same one and the alerts can select it.
Called with (list $ part); part "" is the operator.
*/}}
{{- define "recsys-operator.monitoring.job" -}}
{{- $root := index . 0 -}}
{{- $part := index . 1 -}}
{{- $name := include "recsys-operator.fullname" $root -}}
{{- if $part }}{{ $name = printf "%s-%s" $name $part }}{{ end -}}
{{- printf "%s/%s" $root.Release.Namespace $name -}}
{{- end }}

{{/*
Fails the render unless the cluster serves a monitoring.coreos.com/v1 kind. Called with
(list $ kind value), value naming the setting that asked for it.
*/}}
{{- define "recsys-operator.monitoring.requireKind" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- if not ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind)) }}
{{- fail (printf "%s is true but this cluster does not serve monitoring.coreos.com/v1 %s: install the Prometheus Operator CRDs first, or set %s=false (with helm template, pass --api-versions monitoring.coreos.com/v1/%s)" (index . 2) $kind (index . 2) $kind) }}
{{- end }}
{{- end }}

{{/*
The relabeling that sets the job label (see recsys-operator.monitoring.job).
*/}}
{{- define "recsys-operator.monitoring.jobRelabeling" -}}
- action: replace
  targetLabel: job
  replacement: {{ include "recsys-operator.monitoring.job" . | quote }}
{{- end }}

{{/*
An alert's labels: its severity and monitoring.prometheusRule.alertLabels. Called with
(list $ severity).
*/}}
{{- define "recsys-operator.monitoring.alertLabels" -}}
severity: {{ index . 1 }}
{{- with (index . 0).Values.monitoring.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}
