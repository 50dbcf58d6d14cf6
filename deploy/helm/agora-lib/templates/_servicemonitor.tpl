{{- define "agora-lib.servicemonitor" }}
{{- $v := .v }}
{{- if $v.global.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
    {{- with $v.global.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "agora-lib.selectorLabels" . | nindent 6 }}
  # job="agora" (the value of this Service label), as the alert rules and
  # dashboards under deploy/prometheus and deploy/grafana expect; the operator adds
  # service=<Service name> = the Agora service name.
  jobLabel: app.kubernetes.io/part-of
  # Series carry the release revision, which the rollout analysis selects on.
  podTargetLabels: [rollouts-pod-template-hash]
  endpoints:
    - port: side
      path: /metrics
      interval: {{ $v.global.serviceMonitor.interval }}
{{- end }}
{{- end }}
