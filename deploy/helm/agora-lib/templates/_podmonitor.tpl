{{/*
Prometheus scrapes every pod of the workload once, on its side port. A PodMonitor, not a
ServiceMonitor: the gateway's pods are behind two Services during a blue-green release
(`gateway` and `gateway-preview` select the same pods once the new version is
promoted), and a ServiceMonitor would scrape them once per Service, doubling every
series; while a ServiceMonitor on the active Service only would miss the new pods
before promotion, which is when the pre-promotion analysis reads them.
*/}}
{{- define "agora-lib.podmonitor" }}
{{- $v := .v }}
{{- if $v.global.podMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
    {{- with $v.global.podMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "agora-lib.selectorLabels" . | nindent 6 }}
  # job="agora" (the value of this pod label), as the alert rules and dashboards
  # under deploy/prometheus and deploy/grafana expect.
  jobLabel: app.kubernetes.io/part-of
  # Series carry the release revision, which the rollout analysis selects on.
  podTargetLabels: [rollouts-pod-template-hash]
  podMetricsEndpoints:
    - port: side
      path: /metrics
      interval: {{ $v.global.podMonitor.interval }}
      relabelings:
        # service=<the Agora service>, the label rules and dashboards group by.
        - sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
          targetLabel: service
{{- end }}
{{- end }}
