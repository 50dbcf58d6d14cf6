{{/*
The release gate: p99 latency and server-error ratio of the *new* pods (selected
by their rollouts-pod-template-hash, which the PodMonitor copies onto every
series). A failed measurement beyond failureLimit aborts the rollout: a canary
scales back to the stable version, a blue-green never switches (pre-promotion)
or switches back (post-promotion). No traffic yet (no series) counts as passing.
*/}}
{{- define "agora-lib.analysis" }}
{{- $v := .v }}
{{- $an := $v.rollout.analysis }}
{{- if $v.global.rollouts.enabled }}
{{- $sel := printf "namespace=%q, rollouts_pod_template_hash=\"{{args.pod-hash}}\"" .ctx.Release.Namespace }}
{{- $bucket := $an.latencyBucketMetric }}
{{- $count := $an.requestCountMetric }}
{{- $errors := $an.errorSelector }}
{{- if include "agora-lib.isGateway" . }}
{{- $bucket = "gateway_request_duration_seconds_bucket" }}
{{- $count = "gateway_requests_total" }}
{{- $errors = "status=~\"5..\", deadline!=\"client\"" }}
{{- end }}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: {{ $v.name }}-slo
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  args:
    - name: pod-hash
  metrics:
    - name: p99-latency
      interval: {{ $an.interval }}
      count: {{ $an.count }}
      failureLimit: {{ $an.failureLimit }}
      successCondition: {{ printf "len(result) == 0 || isNaN(result[0]) || result[0] <= %v" $an.maxP99Seconds | quote }}
      provider:
        prometheus:
          address: {{ $v.global.prometheus.address | quote }}
          query: {{ printf "histogram_quantile(0.99, sum by (le) (rate(%s{%s}[2m])))" $bucket $sel | quote }}
    - name: error-ratio
      interval: {{ $an.interval }}
      count: {{ $an.count }}
      failureLimit: {{ $an.failureLimit }}
      successCondition: {{ printf "len(result) == 0 || isNaN(result[0]) || result[0] <= %v" $an.maxErrorRatio | quote }}
      provider:
        prometheus:
          address: {{ $v.global.prometheus.address | quote }}
          query: {{ printf "sum(rate(%s{%s, %s}[2m])) / clamp_min(sum(rate(%s{%s}[2m])), 1e-9)" $count $sel $errors $count $sel | quote }}
{{- end }}
{{- end }}
