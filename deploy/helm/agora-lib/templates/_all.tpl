{{/*
Everything one Agora workload needs. A thin chart's only template is
  {{ include "agora-lib.all" . }}
*/}}
{{- define "agora-lib.all" -}}
{{- $v := include "agora-lib.values" . | fromYaml -}}
{{- $args := dict "v" $v "ctx" . -}}
{{- include "agora-lib.serviceaccount" $args }}
{{- include "agora-lib.service" $args }}
{{- include "agora-lib.workload" $args }}
{{- include "agora-lib.pdb" $args }}
{{- include "agora-lib.autoscaling" $args }}
{{- include "agora-lib.networkpolicy" $args }}
{{- include "agora-lib.certificate" $args }}
{{- include "agora-lib.podmonitor" $args }}
{{- include "agora-lib.analysis" $args }}
{{- include "agora-lib.ingress" $args }}
{{- end -}}
