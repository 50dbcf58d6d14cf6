{{/*
The release gate: p99 latency and server-error ratio of the *new* pods (selected
by their rollouts-pod-template-hash, which the PodMonitor copies onto every
series). A failed measurement beyond failureLimit aborts the rollout: a canary
scales back to the stable version, a blue-green never switches (pre-promotion)
or switches back (post-promotion).

A measurement over fewer than minRequests calls to the new pods (the query then
returns nothing) is Inconclusive, not a pass: a canary nobody called is not
promoted on no evidence; past inconclusiveLimit the rollout pauses for a person to
promote or abort. The exception is a blue-green's pre-promotion run: nothing routes
to the preview Service by itself, so it judges only what someone sends there
(smoke tests) and passes on silence (docs/deploy.md, "Known gaps").

A canary's background run has no count: it measures until the rollout completes
(every step, 10 % to 100 %). A blue-green's runs must end (the switch, the
scale-down wait for them), so they take `count` measurements.
*/}}
{{- define "agora-lib.analysis" }}
{{- $v := .v }}
{{- if $v.global.rollouts.enabled }}
{{- if eq $v.rollout.strategy "blueGreen" }}
{{- include "agora-lib.analysisTemplate" (dict "in" . "suffix" "slo" "bounded" true "silencePasses" false) }}
{{- include "agora-lib.analysisTemplate" (dict "in" . "suffix" "preview-slo" "bounded" true "silencePasses" true) }}
{{- else }}
{{- include "agora-lib.analysisTemplate" (dict "in" . "suffix" "slo" "bounded" false "silencePasses" false) }}
{{- end }}
{{- end }}
{{- end }}

{{/* One AnalysisTemplate <name>-<suffix>. Argument: dict "in" (the workload's v/ctx) "suffix" "bounded" "silencePasses". */}}
{{- define "agora-lib.analysisTemplate" }}
{{- $v := .in.v }}
{{- $an := $v.rollout.analysis }}
{{- $sel := printf "namespace=%q, rollouts_pod_template_hash=\"{{args.pod-hash}}\"" .in.ctx.Release.Namespace }}
{{- $bucket := $an.latencyBucketMetric }}
{{- $count := $an.requestCountMetric }}
{{- $errors := $an.errorSelector }}
{{- if include "agora-lib.isGateway" .in }}
{{- $bucket = "gateway_request_duration_seconds_bucket" }}
{{- $count = "gateway_requests_total" }}
{{- $errors = "status=~\"5..\", deadline!=\"client\"" }}
{{- end }}
{{- $enough := "" }}
{{- if not .silencePasses }}
{{- $enough = printf " and on() (sum(increase(%s{%s}[2m])) >= %v)" $count $sel $an.minRequests }}
{{- end }}
{{- $measured := "len(result) > 0 && !isNaN(result[0])" }}
{{- $silent := "len(result) == 0 || isNaN(result[0])" }}
{{- $queries := dict
  "p99-latency" (printf "histogram_quantile(0.99, sum by (le) (rate(%s{%s}[2m])))%s" $bucket $sel $enough)
  "error-ratio" (printf "(sum(rate(%s{%s, %s}[2m])) or on() vector(0)) / clamp_min(sum(rate(%s{%s}[2m])), 1e-9)%s" $count $sel $errors $count $sel $enough) }}
{{- $limits := dict "p99-latency" $an.maxP99Seconds "error-ratio" $an.maxErrorRatio }}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: {{ $v.name }}-{{ .suffix }}
  labels:
    {{- include "agora-lib.labels" .in | nindent 4 }}
spec:
  args:
    - name: pod-hash
  metrics:
    {{- range $metric := list "p99-latency" "error-ratio" }}
    {{- $limit := get $limits $metric }}
    - name: {{ $metric }}
      initialDelay: {{ $an.initialDelay }}
      interval: {{ $an.interval }}
      {{- if $.bounded }}
      count: {{ $an.count }}
      {{- end }}
      failureLimit: {{ $an.failureLimit }}
      inconclusiveLimit: {{ $an.inconclusiveLimit }}
      {{- if $.silencePasses }}
      successCondition: {{ printf "%s || result[0] <= %v" $silent $limit | quote }}
      {{- else }}
      successCondition: {{ printf "%s && result[0] <= %v" $measured $limit | quote }}
      {{- end }}
      failureCondition: {{ printf "%s && result[0] > %v" $measured $limit | quote }}
      provider:
        prometheus:
          address: {{ $v.global.prometheus.address | quote }}
          query: {{ get $queries $metric | quote }}
    {{- end }}
{{- end }}
