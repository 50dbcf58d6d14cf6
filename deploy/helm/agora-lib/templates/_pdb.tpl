{{- define "agora-lib.pdb" }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  # Drains and upgrades take one pod at a time; the rest keep serving.
  maxUnavailable: {{ .v.pdb.maxUnavailable }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "agora-lib.selectorLabels" . | nindent 6 }}
{{- end }}
