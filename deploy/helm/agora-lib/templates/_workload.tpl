{{/* Where the Temporal client certificate Secret (global.temporal.tlsSecret) is mounted. */}}
{{- define "agora-lib.temporalTLSDir" -}}
/var/run/agora/temporal-tls
{{- end -}}

{{- define "agora-lib.env" -}}
{{- $v := .v -}}
{{- $g := $v.global -}}
- {name: AGORA_PROFILE, value: prod}
- {name: AGORA_SERVICE, value: {{ $v.name | quote }}}
- {name: AGORA_LOG_LEVEL, value: {{ $g.logLevel | quote }}}
# Listen on the pod IP; the state folder is the writable /tmp emptyDir.
- {name: AGORA_HOST, value: "0.0.0.0"}
- {name: AGORA_BIND_HOST, value: "0.0.0.0"}
- {name: AGORA_STATE_DIR, value: /tmp/agora}
- {name: AGORA_PKI_DIR, value: {{ $g.pki.mountPath | quote }}}
- {name: AGORA_CODEC_KEYS_FILE, value: {{ printf "%s/codec-keys.json" $g.codecKeys.mountPath | quote }}}
- {name: PYTHONDONTWRITEBYTECODE, value: "1"}
- {name: AGORA_TRACE_SAMPLE_RATIO, value: {{ $g.traceSampleRatio | quote }}}
- {name: AGORA_OTLP_ENDPOINT, value: {{ $g.otel.endpoint | quote }}}
# Read by the OpenTelemetry SDK (and agora.temporal for the SDK's metrics); the shared
# collector only fills it in where it is missing.
- {name: OTEL_RESOURCE_ATTRIBUTES, value: {{ printf "deployment.environment.name=%s" $g.environment | quote }}}
- {name: AGORA_TRACING, value: {{ ternary "on" "off" $v.uses.otel | quote }}}
- {name: AGORA_TEMPORAL_ADDRESS, value: {{ $g.temporal.address | quote }}}
- {name: AGORA_TEMPORAL_NAMESPACE, value: {{ $g.temporal.namespace | quote }}}
{{- with $g.temporal.uiUrl }}
- {name: AGORA_TEMPORAL_UI_URL, value: {{ . | quote }}}
{{- end }}
{{- if and $v.uses.temporal $g.temporal.apiKeySecret.name }}
{{- if not $g.temporal.apiKeySecret.key }}
{{- fail "global.temporal.apiKeySecret.key: the key of the Secret that holds the Temporal API key" }}
{{- end }}
- name: AGORA_TEMPORAL_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ $g.temporal.apiKeySecret.name }}, key: {{ $g.temporal.apiKeySecret.key }}}
{{- end }}
{{- if and $v.uses.temporal $g.temporal.tlsSecret }}
{{- $dir := include "agora-lib.temporalTLSDir" . }}
- {name: AGORA_TEMPORAL_TLS_CERT, value: {{ printf "%s/tls.crt" $dir | quote }}}
- {name: AGORA_TEMPORAL_TLS_KEY, value: {{ printf "%s/tls.key" $dir | quote }}}
{{- if $g.temporal.tlsServerCA }}
- {name: AGORA_TEMPORAL_TLS_CA, value: {{ printf "%s/ca.crt" $dir | quote }}}
{{- end }}
{{- end }}
- {name: AGORA_KAFKA_BOOTSTRAP, value: {{ $g.kafka.bootstrap | quote }}}
- {name: AGORA_REDIS_URL, value: {{ $g.redis.url | quote }}}
- {name: AGORA_PORT_REDIS, value: {{ $g.redis.port | quote }}}
- {name: AGORA_ELASTICSEARCH_URL, value: {{ $g.elasticsearch.url | quote }}}
- {name: AGORA_POSTGRES_HOST, value: {{ $g.postgres.host | quote }}}
- {name: AGORA_PORT_POSTGRES, value: {{ $g.postgres.port | quote }}}
{{- range $svc, $port := $g.grpcPorts }}
- {name: AGORA_PORT_{{ upper $svc }}_GRPC, value: {{ $port | quote }}}
- {name: AGORA_GRPC_HOST_{{ upper $svc }}, value: {{ $svc | quote }}}
{{- end }}
{{- if include "agora-lib.isGateway" . }}
- {name: AGORA_PORT_GATEWAY, value: {{ $v.ports.http | quote }}}
- {name: AGORA_PORT_GATEWAY_SIDE, value: {{ $v.ports.side | quote }}}
{{- if $v.ingress.enabled }}
{{- /* Behind the ingress every TCP peer is the controller: the gateway takes the
       client's address from X-Forwarded-For, from these peers only (per-address
       rate limits on sign-in would otherwise be one bucket for everybody). */}}
{{- if not $g.ingressController.addresses }}
{{- fail "global.ingressController.addresses: the ingress controller pods' addresses or networks are required when the gateway's ingress is enabled" }}
{{- end }}
- {name: AGORA_GATEWAY_TRUSTED_PROXIES, value: {{ join "," $g.ingressController.addresses | quote }}}
{{- end }}
{{- else }}
- {name: AGORA_PORT_{{ upper $v.name }}_SIDE, value: {{ $v.ports.side | quote }}}
{{- end }}
{{- if $v.uses.postgres }}
- {name: AGORA_DB_POOL_SIZE, value: {{ $g.postgres.poolSize | quote }}}
- name: AGORA_DB_PASSWORD_{{ upper $v.name }}
  valueFrom:
    secretKeyRef: {name: {{ printf "%s%s" $g.postgres.passwordSecretPrefix $v.name }}, key: {{ $g.postgres.passwordSecretKey }}}
{{- end }}
{{- if $v.uses.kafka }}
{{- if not (has $g.kafka.securityProtocol (list "PLAINTEXT" "SSL")) }}
{{- fail (printf "global.kafka.securityProtocol: PLAINTEXT or SSL, not %q" $g.kafka.securityProtocol) }}
{{- end }}
- {name: AGORA_KAFKA_SECURITY_PROTOCOL, value: {{ $g.kafka.securityProtocol | quote }}}
{{- if $g.kafka.caSecret }}
- {name: AGORA_KAFKA_CA_FILE, value: {{ printf "%s/ca.crt" $g.kafka.caMountPath | quote }}}
{{- end }}
{{- end }}
{{- if and $v.uses.redis $g.redis.passwordSecret.name }}
- name: AGORA_REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $g.redis.passwordSecret.name }}, key: {{ $g.redis.passwordSecret.key }}}
{{- end }}
{{- if $v.uses.elasticsearch }}
- {name: AGORA_SEARCH_INDEX_PREFIX, value: {{ $g.elasticsearch.indexPrefix | quote }}}
{{- if $g.elasticsearch.caSecret }}
- {name: AGORA_ELASTICSEARCH_CA_FILE, value: {{ printf "%s/ca.crt" $g.elasticsearch.caMountPath | quote }}}
{{- end }}
{{- if $g.elasticsearch.apiKeySecret.name }}
- name: AGORA_ELASTICSEARCH_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ $g.elasticsearch.apiKeySecret.name }}, key: {{ $g.elasticsearch.apiKeySecret.key }}}
{{- end }}
{{- end }}
{{- range $name, $value := $v.env }}
- {name: {{ $name }}, value: {{ $value | quote }}}
{{- end }}
{{- range $v.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ .secretName }}, key: {{ .key }}}
{{- end }}
{{- end -}}

{{- define "agora-lib.podTemplate" -}}
{{- $v := .v -}}
{{- $g := $v.global -}}
metadata:
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
  annotations:
    kubectl.kubernetes.io/default-container: agora
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ $v.name }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $g.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ $g.uid }}
    runAsGroup: {{ $g.uid }}
    fsGroup: {{ $g.uid }}
    seccompProfile: {type: RuntimeDefault}
  # Three zones: at most one pod more in any zone than in another, never scheduled
  # otherwise; unreachable (tainted) nodes of a lost zone do not count as a domain.
  topologySpreadConstraints:
    - maxSkew: {{ $g.topology.maxSkew }}
      topologyKey: {{ $g.topology.zoneKey }}
      whenUnsatisfiable: DoNotSchedule
      nodeTaintsPolicy: Honor
      nodeAffinityPolicy: Honor
      labelSelector:
        matchLabels:
          {{- include "agora-lib.selectorLabels" . | nindent 10 }}
      matchLabelKeys: [{{ ternary "rollouts-pod-template-hash" "pod-template-hash" $g.rollouts.enabled }}]
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "agora-lib.selectorLabels" . | nindent 10 }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "agora-lib.selectorLabels" . | nindent 16 }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: agora
      image: {{ include "agora-lib.image" . }}
      imagePullPolicy: {{ $g.image.pullPolicy }}
      {{- if include "agora-lib.isGateway" . }}
      command: [python, -m, gateway]
      {{- else }}
      command: [python, -m, workers, {{ $v.name }}]
      {{- end }}
      ports:
        {{- if include "agora-lib.isGateway" . }}
        - {name: http, containerPort: {{ $v.ports.http }}, protocol: TCP}
        {{- else }}
        - {name: grpc-mtls, containerPort: {{ $v.ports.grpc }}, protocol: TCP}
        {{- end }}
        - {name: side, containerPort: {{ $v.ports.side }}, protocol: TCP}
      env:
        {{- include "agora-lib.env" . | nindent 8 }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      startupProbe:
        httpGet: {path: {{ $v.probes.startup.path }}, port: side}
        periodSeconds: {{ $v.probes.startup.periodSeconds }}
        failureThreshold: {{ $v.probes.startup.failureThreshold }}
        timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
      livenessProbe:
        httpGet: {path: {{ $v.probes.liveness.path }}, port: side}
        periodSeconds: {{ $v.probes.liveness.periodSeconds }}
        failureThreshold: {{ $v.probes.liveness.failureThreshold }}
        timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
      readinessProbe:
        httpGet: {path: {{ $v.probes.readiness.path }}, port: side}
        periodSeconds: {{ $v.probes.readiness.periodSeconds }}
        failureThreshold: {{ $v.probes.readiness.failureThreshold }}
        timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
      lifecycle:
        # Let endpoints and load balancers drop the pod before SIGTERM starts draining.
        preStop:
          sleep: {seconds: {{ $v.preStopSleepSeconds }}}
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        privileged: false
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        # Writable parent of the certificate folders (the process takes a lock file there)...
        - {name: pki, mountPath: {{ $g.pki.mountPath }}}
        # ...and this workload's cert-manager secret: ca.crt, tls.crt, tls.key.
        - {name: tls, mountPath: {{ printf "%s/%s" $g.pki.mountPath $v.name }}, readOnly: true}
        # The payload codec's key ring (codec-keys.json).
        - {name: codec-keys, mountPath: {{ $g.codecKeys.mountPath }}, readOnly: true}
        {{- if and $v.uses.temporal $g.temporal.tlsSecret }}
        # The client certificate (and key) presented to Temporal.
        - {name: temporal-tls, mountPath: {{ include "agora-lib.temporalTLSDir" . }}, readOnly: true}
        {{- end }}
        {{- if and $v.uses.kafka $g.kafka.caSecret }}
        # The CA the Kafka brokers' TLS certificates are checked against.
        - {name: kafka-ca, mountPath: {{ $g.kafka.caMountPath }}, readOnly: true}
        {{- end }}
        {{- if and $v.uses.elasticsearch $g.elasticsearch.caSecret }}
        # The CA of Elasticsearch's HTTP certificate.
        - {name: elasticsearch-ca, mountPath: {{ $g.elasticsearch.caMountPath }}, readOnly: true}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {sizeLimit: 128Mi}
    - name: pki
      emptyDir: {sizeLimit: 4Mi, medium: Memory}
    - name: tls
      secret:
        secretName: {{ $v.name }}-tls
        defaultMode: 288  # 0440: readable by the pod's group (fsGroup) only
    - name: codec-keys
      secret:
        secretName: {{ $g.codecKeys.secretName }}
        defaultMode: 288
    {{- if and $v.uses.temporal $g.temporal.tlsSecret }}
    - name: temporal-tls
      secret:
        secretName: {{ $g.temporal.tlsSecret }}
        items:
          - {key: tls.crt, path: tls.crt}
          - {key: tls.key, path: tls.key}
          {{- if $g.temporal.tlsServerCA }}
          - {key: ca.crt, path: ca.crt}
          {{- end }}
        defaultMode: 288
    {{- end }}
    {{- if and $v.uses.kafka $g.kafka.caSecret }}
    - name: kafka-ca
      secret:
        secretName: {{ $g.kafka.caSecret }}
        # Only the PEM certificate (Strimzi's Secret also holds a PKCS12 store and its password).
        items: [{key: {{ $g.kafka.caSecretKey }}, path: ca.crt}]
        defaultMode: 288
    {{- end }}
    {{- if and $v.uses.elasticsearch $g.elasticsearch.caSecret }}
    - name: elasticsearch-ca
      secret:
        secretName: {{ $g.elasticsearch.caSecret }}
        items: [{key: {{ $g.elasticsearch.caSecretKey }}, path: ca.crt}]
        defaultMode: 288
    {{- end }}
{{- end -}}

{{- define "agora-lib.workload" }}
{{- $v := .v }}
---
{{- if $v.global.rollouts.enabled }}
apiVersion: argoproj.io/v1alpha1
kind: Rollout
{{- else }}
apiVersion: apps/v1
kind: Deployment
{{- end }}
metadata:
  name: {{ $v.name }}
  labels:
    {{- include "agora-lib.labels" . | nindent 4 }}
spec:
  # No replicas: the autoscaler owns the count (starts at its minimum).
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "agora-lib.selectorLabels" . | nindent 6 }}
  template:
    {{- include "agora-lib.podTemplate" . | nindent 4 }}
  {{- if not $v.global.rollouts.enabled }}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: "25%", maxUnavailable: 0}
  {{- else if eq $v.rollout.strategy "blueGreen" }}
  strategy:
    blueGreen:
      activeService: {{ $v.name }}
      previewService: {{ $v.name }}-preview
      previewReplicaCount: {{ $v.rollout.blueGreen.previewReplicaCount }}
      autoPromotionEnabled: {{ $v.rollout.blueGreen.autoPromotionEnabled }}
      {{- if $v.rollout.blueGreen.autoPromotionSeconds }}
      autoPromotionSeconds: {{ $v.rollout.blueGreen.autoPromotionSeconds }}
      {{- end }}
      # The previous (blue) pods stay up this long after the switch, so a failed
      # post-promotion analysis switches traffic straight back to them.
      scaleDownDelaySeconds: {{ $v.rollout.blueGreen.scaleDownDelaySeconds }}
      abortScaleDownDelaySeconds: 30
      # Nothing routes to the preview Service by itself: this run judges only the
      # traffic someone sends there (smoke tests) and passes on silence.
      prePromotionAnalysis:
        templates: [{templateName: {{ $v.name }}-preview-slo}]
        args:
          - name: pod-hash
            valueFrom: {podTemplateHashValue: Latest}
      postPromotionAnalysis:
        templates: [{templateName: {{ $v.name }}-slo}]
        args:
          - name: pod-hash
            valueFrom: {podTemplateHashValue: Latest}
  {{- else }}
  strategy:
    canary:
      maxSurge: {{ $v.rollout.canary.maxSurge | quote }}
      maxUnavailable: {{ $v.rollout.canary.maxUnavailable }}
      # Runs from the first step until the rollout completes (its metrics have no
      # count); a failed analysis aborts the rollout and scales the canary away, the
      # stable version keeps serving; an inconclusive one (too few calls) pauses it.
      analysis:
        templates: [{templateName: {{ $v.name }}-slo}]
        startingStep: 1
        args:
          - name: pod-hash
            valueFrom: {podTemplateHashValue: Latest}
      steps:
        {{- toYaml $v.rollout.canary.steps | nindent 8 }}
  {{- end }}
{{- end }}
