{{- define "agora-lib.ingress" }}
{{- $v := .v }}
{{- if and $v.ingress.enabled (include "agora-lib.isGateway" .) }}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
  {{- with $v.ingress.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  ingressClassName: {{ $v.ingress.className }}
  {{- if $v.ingress.tlsSecretName }}
  tls:
    - hosts: [{{ $v.ingress.host | quote }}]
      secretName: {{ $v.ingress.tlsSecretName }}
  {{- end }}
  rules:
    - {{- if $v.ingress.host }}
      host: {{ $v.ingress.host | quote }}
      {{- end }}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              # The active Service: blue-green switches its selector on promotion.
              service: {name: {{ $v.name }}, port: {name: http}}
{{- end }}
{{- end }}
