{{- define "agora-lib.scaleTargetRef" -}}
{{- if .v.global.rollouts.enabled -}}
{apiVersion: argoproj.io/v1alpha1, kind: Rollout, name: {{ .v.name }}}
{{- else -}}
{apiVersion: apps/v1, kind: Deployment, name: {{ .v.name }}}
{{- end -}}
{{- end -}}

{{/*
Services with KEDA: one ScaledObject scaling on CPU *and* the Temporal task-queue
backlog (KEDA owns the resulting HPA; a second HPA on the same target would fight
it). Otherwise, and for the gateway: a plain HPA on CPU.
*/}}
{{- define "agora-lib.autoscaling" }}
{{- $v := .v }}
{{- $a := $v.autoscaling }}
{{- $g := $v.global }}
{{- if and $g.keda.enabled $a.queue.enabled (not (include "agora-lib.isGateway" .)) }}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    {{- include "agora-lib.scaleTargetRef" . | fromYaml | toYaml | nindent 4 }}
  minReplicaCount: {{ $a.minReplicas }}
  maxReplicaCount: {{ $a.maxReplicas }}
  pollingInterval: {{ $g.keda.pollingInterval }}
  cooldownPeriod: {{ $g.keda.cooldownPeriod }}
  advanced:
    horizontalPodAutoscalerConfig:
      name: {{ $v.name }}
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 300
          policies: [{type: Percent, value: 50, periodSeconds: 60}]
  triggers:
    - type: cpu
      metricType: Utilization
      metadata:
        value: {{ $a.targetCPUUtilizationPercentage | quote }}
    {{- if eq $g.keda.trigger "prometheus" }}
    - type: prometheus
      metadata:
        serverAddress: {{ $g.prometheus.address | quote }}
        query: {{ printf "sum(approximate_backlog_count{namespace=%q,taskqueue=%q})" $g.temporal.namespace (printf "agora-%s" $v.name) | quote }}
        threshold: {{ $a.queue.targetQueueSize | quote }}
        activationThreshold: {{ $a.queue.activationTargetQueueSize | quote }}
    {{- else }}
    - type: temporal
      metadata:
        endpoint: {{ $g.temporal.address | quote }}
        namespace: {{ $g.temporal.namespace | quote }}
        taskQueue: {{ printf "agora-%s" $v.name | quote }}
        queueTypes: {{ $a.queue.queueTypes | quote }}
        targetQueueSize: {{ $a.queue.targetQueueSize | quote }}
        activationTargetQueueSize: {{ $a.queue.activationTargetQueueSize | quote }}
      {{- with $g.keda.authenticationRef }}
      authenticationRef: {name: {{ . }}}
      {{- end }}
    {{- end }}
{{- else }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    {{- include "agora-lib.scaleTargetRef" . | fromYaml | toYaml | nindent 4 }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ $a.targetCPUUtilizationPercentage }}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
      policies: [{type: Percent, value: 50, periodSeconds: 60}]
{{- end }}
{{- end }}
