{{- define "agora-lib.scaleTargetRef" -}}
{{- if .v.global.rollouts.enabled -}}
{apiVersion: argoproj.io/v1alpha1, kind: Rollout, name: {{ .v.name }}}
{{- else -}}
{apiVersion: apps/v1, kind: Deployment, name: {{ .v.name }}}
{{- end -}}
{{- end -}}

{{/*
With KEDA: one ScaledObject scaling on CPU and, for services, the Temporal task-queue
backlog, for Kafka consumers (autoscaling.kafkaLag) their consumer group's lag, for
the gateway (autoscaling.inFlight) its HTTP requests in flight (KEDA owns the
resulting HPA; a second HPA on the same target would fight it). Otherwise: a plain
HPA on CPU.
*/}}
{{- define "agora-lib.autoscaling" }}
{{- $v := .v }}
{{- $a := $v.autoscaling }}
{{- $g := $v.global }}
{{- if and $a.kafkaLag.enabled (not $a.kafkaLag.group) }}
{{- fail (printf "%s: autoscaling.kafkaLag.group (the consumer group) is required with autoscaling.kafkaLag.enabled" $v.name) }}
{{- end }}
{{- if and $g.keda.enabled (or $a.queue.enabled $a.kafkaLag.enabled $a.inFlight.enabled) }}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
  annotations:
    # A release that had the plain HPA of the same name (KEDA off, or the gateway
    # before it scaled on requests in flight): KEDA's webhook refuses a ScaledObject
    # whose target an HPA it does not own scales, unless it takes that HPA over.
    scaledobject.keda.sh/transfer-hpa-ownership: "true"
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
    {{- if not $a.queue.enabled }}
    {{- else if eq $g.keda.trigger "prometheus" }}
    {{- /* The Temporal chart's ServiceMonitors do not honor the server's labels: its
           `namespace` (the Temporal namespace) is scraped as `exported_namespace`,
           `namespace` being the Kubernetes one (deploy/k8s/engines/temporal-values.yaml). */}}
    - type: prometheus
      metadata:
        serverAddress: {{ $g.prometheus.address | quote }}
        query: {{ printf "sum(approximate_backlog_count{exported_namespace=%q,taskqueue=%q})" $g.temporal.namespace (printf "agora-%s" $v.name) | quote }}
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
    {{- with $a.kafkaLag }}
    {{- if .enabled }}
    {{- /* agora_kafka_consumer_lag (agora.kafka): records behind, per group, topic and
           partition, from each consumer's /metrics (job="agora", namespace = this
           release's). A partition may still be reported by a pod it moved away from:
           take the highest report per partition, then the group's total. */}}
    - type: prometheus
      metadata:
        serverAddress: {{ $g.prometheus.address | quote }}
        query: {{ printf "sum(max by (topic, partition) (agora_kafka_consumer_lag{job=\"agora\",namespace=%q,group=%q}))" $.ctx.Release.Namespace .group | quote }}
        threshold: {{ .targetLagPerPod | quote }}
        activationThreshold: {{ .activationLag | quote }}
    {{- end }}
    {{- end }}
    {{- with $a.inFlight }}
    {{- if .enabled }}
    {{- /* gateway_requests_in_flight (gateway/metrics.py): the HTTP requests each pod is
           answering, from its /metrics (job="agora", namespace = this release's, service
           = this workload's). A gateway waiting on its upstreams holds requests without
           using CPU: KEDA asks for the sum / targetPerPod pods. */}}
    - type: prometheus
      metadata:
        serverAddress: {{ $g.prometheus.address | quote }}
        query: {{ printf "sum(gateway_requests_in_flight{job=\"agora\",namespace=%q,service=%q})" $.ctx.Release.Namespace $v.name | quote }}
        threshold: {{ .targetPerPod | quote }}
        activationThreshold: {{ .activationTarget | quote }}
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
