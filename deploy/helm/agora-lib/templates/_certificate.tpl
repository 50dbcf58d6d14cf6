{{/* The workload's mTLS identity: the same ca.crt / tls.crt / tls.key the process reads locally. */}}
{{- define "agora-lib.certificate" }}
{{- $v := .v }}
{{- $pki := $v.global.pki }}
{{- $ns := .ctx.Release.Namespace }}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  secretName: {{ $v.name }}-tls
  # The CN is the caller identity services check (agora.grpc.peer_cn).
  commonName: {{ $v.name }}
  dnsNames:
    - {{ $v.name }}
    - {{ $v.name }}.{{ $ns }}
    - {{ $v.name }}.{{ $ns }}.svc
    - {{ $v.name }}.{{ $ns }}.svc.{{ $pki.clusterDomain }}
    - localhost
  duration: {{ $pki.duration }}
  renewBefore: {{ $pki.renewBefore }}
  privateKey:
    algorithm: ECDSA
    size: 256
    encoding: PKCS8
    rotationPolicy: Always
  usages: [digital signature, key encipherment, server auth, client auth]
  issuerRef:
    {{- toYaml $pki.issuerRef | nindent 4 }}
{{- end }}
