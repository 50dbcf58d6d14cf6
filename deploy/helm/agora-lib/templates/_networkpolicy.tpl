{{/*
Allow-list of this workload; everything else is denied (this policy selects the
pods for both directions, and the umbrella adds a namespace-wide default deny).
*/}}
{{- define "agora-lib.networkpolicy" }}
{{- $v := .v }}
{{- $g := $v.global }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "agora-lib.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    # Prometheus scrapes the side port (/metrics).
    {{- include "agora-lib.npRule" (dict "from" true "peers" $g.prometheus.peers "ports" (list $v.ports.side)) | nindent 4 }}
    {{- if include "agora-lib.isGateway" . }}
    # The ingress controller reaches the public HTTP port.
    {{- include "agora-lib.npRule" (dict "from" true "peers" $g.ingressController.peers "ports" (list $v.ports.http)) | nindent 4 }}
    {{- else if $v.grpcCallers }}
    # Agora callers of this gRPC API (mTLS).
    {{- $peers := list }}
    {{- range $v.grpcCallers }}
    {{- $peers = append $peers (dict "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" . "app.kubernetes.io/part-of" "agora"))) }}
    {{- end }}
    {{- include "agora-lib.npRule" (dict "from" true "peers" $peers "ports" (list $v.ports.grpc)) | nindent 4 }}
    {{- end }}
  egress:
    # DNS
    {{- include "agora-lib.npRule" (dict "peers" $g.dns.peers "ports" (list 53) "protocols" (list "UDP" "TCP")) | nindent 4 }}
    {{- range $engine := list "postgres" "redis" "kafka" "temporal" "elasticsearch" "otel" }}
    {{- if index $v.uses $engine }}
    {{- $e := index $g $engine }}
    # {{ $engine }}
    {{- include "agora-lib.npRule" (dict "peers" $e.peers "ports" (list $e.port)) | nindent 4 }}
    {{- end }}
    {{- end }}
    {{- range $svc := $v.grpcEgressTo }}
    # gRPC (mTLS) to {{ $svc }}
    {{- $peer := dict "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" $svc "app.kubernetes.io/part-of" "agora")) }}
    {{- include "agora-lib.npRule" (dict "peers" (list $peer) "ports" (list (index $g.grpcPorts $svc))) | nindent 4 }}
    {{- end }}
{{- end }}
