{{/* Labels on every object. Argument: dict "v" (merged values) "ctx" (root context). */}}
{{- define "agora-lib.labels" -}}
app.kubernetes.io/name: {{ .v.name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/part-of: agora
app.kubernetes.io/component: {{ .v.component }}
app.kubernetes.io/version: {{ (.v.image | default dict).tag | default .v.global.image.tag | default .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 }}
{{- end -}}

{{/* Pod selector of a workload (stable across releases). */}}
{{- define "agora-lib.selectorLabels" -}}
app.kubernetes.io/name: {{ .v.name }}
app.kubernetes.io/part-of: agora
{{- end -}}

{{/* The workload's own digest or tag (`<workload>.image`) before global.image's. */}}
{{- define "agora-lib.image" -}}
{{- $img := .v.global.image -}}
{{- $own := .v.image | default dict -}}
{{- if $own.digest -}}
{{ $img.repository }}@{{ $own.digest }}
{{- else if $own.tag -}}
{{ $img.repository }}:{{ $own.tag }}
{{- else if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default .ctx.Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The port clients and the Service use: gRPC (mTLS) for services, HTTP for the gateway. */}}
{{- define "agora-lib.isGateway" -}}
{{- if eq .v.component "gateway" }}true{{ end -}}
{{- end -}}

{{/* NetworkPolicy "to"/"from" peers plus ports. Argument: dict "peers" "ports" (list of ints) "protocols". */}}
{{- define "agora-lib.npRule" -}}
- {{ if .from }}from{{ else }}to{{ end }}:
{{- toYaml .peers | nindent 4 }}
  ports:
{{- range $port := .ports }}
{{- range $proto := ($.protocols | default (list "TCP")) }}
    - protocol: {{ $proto }}
      port: {{ $port }}
{{- end }}
{{- end }}
{{- end -}}
