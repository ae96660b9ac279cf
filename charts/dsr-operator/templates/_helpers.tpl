{{/* Names and labels shared by every template. */}}
{{- define "dsr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dsr.fullname" -}}
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

{{- define "dsr.agentName" -}}
{{- printf "%s-agent" (include "dsr.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dsr.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "dsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "dsr.operatorSelector" -}}
app.kubernetes.io/name: {{ include "dsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "dsr.agentSelector" -}}
app.kubernetes.io/name: {{ include "dsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "dsr.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dsr.netscalerSecret" -}}
{{- default (printf "%s-netscaler" (include "dsr.fullname" .)) .Values.netscaler.existingSecret -}}
{{- end -}}

{{- define "dsr.leaseName" -}}
{{- default (include "dsr.fullname" .) .Values.operator.leaseName -}}
{{- end -}}


{{/* Non-empty when the operator serves Services of type LoadBalancer (a class, or the default). */}}
{{- define "dsr.frontDoor" -}}
{{- if or .Values.loadBalancerClass .Values.defaultLoadBalancer }}on{{ end }}
{{- end }}
