{{- define "agora-lib.serviceaccount" }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
  {{- with .v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The processes never call the Kubernetes API.
automountServiceAccountToken: false
{{- end }}
