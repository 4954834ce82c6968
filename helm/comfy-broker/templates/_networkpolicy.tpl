{{/* Rule fragments of templates/networkpolicy.yaml. */}}
{{- define "cb.np.dns" -}}
# DNS
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}
{{- define "cb.np.redis" -}}
{{- if .Values.redis.bundled.enabled }}
# Redis (bundled)
- to:
    - podSelector:
        matchLabels:
          {{- include "cb.selector" (list . "redis") | nindent 10 }}
  ports:
    - {port: 6379, protocol: TCP}
{{- else }}
# Redis (external)
- ports:
    - {port: {{ .Values.redis.external.port }}, protocol: TCP}
  {{- with .Values.redis.external.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}
{{- define "cb.np.objectStore" -}}
{{- if eq .Values.files.backend "s3" }}
# Object store
- ports:
    - {port: {{ .Values.files.s3.port }}, protocol: TCP}
  {{- with .Values.files.s3.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}
{{- define "cb.np.metricsIngress" -}}
{{- if .Values.metrics.enabled }}
- ports:
    - {port: {{ .Values.metrics.port }}, protocol: TCP}
  {{- with .Values.networkPolicy.metricsFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}
