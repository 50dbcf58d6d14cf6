{{- define "agora-lib.serviceSpecPorts" -}}
ports:
{{- if include "agora-lib.isGateway" . }}
  - name: http
    port: {{ .v.ports.http }}
    targetPort: http
    protocol: TCP
    appProtocol: http
{{- else }}
  # The only gRPC port: mutual TLS, there is no plaintext listener.
  - name: grpc-mtls
    port: {{ .v.ports.grpc }}
    targetPort: grpc-mtls
    protocol: TCP
    appProtocol: grpc
{{- end }}
  - name: side
    port: {{ .v.ports.side }}
    targetPort: side
    protocol: TCP
    appProtocol: http
{{- end -}}

{{- define "agora-lib.service" }}
---
apiVersion: v1
kind: Service
metadata:
  # Named like the Agora service: peers dial <name>:<port> (AGORA_GRPC_HOST_<NAME>)
  # and the certificate carries this name.
  name: {{ .v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "agora-lib.selectorLabels" . | nindent 4 }}
  {{- include "agora-lib.serviceSpecPorts" . | nindent 2 }}
{{- if and .v.global.rollouts.enabled (eq .v.rollout.strategy "blueGreen") }}
---
# Blue-green: the new version is reachable here before it is promoted.
apiVersion: v1
kind: Service
metadata:
  name: {{ .v.name }}-preview
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "agora-lib.selectorLabels" . | nindent 4 }}
  {{- include "agora-lib.serviceSpecPorts" . | nindent 2 }}
{{- end }}
{{- end }}
