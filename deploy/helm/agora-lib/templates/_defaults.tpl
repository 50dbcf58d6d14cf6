{{/*
Default values of every Agora workload chart. A thin chart's values.yaml holds only
what differs (its ports, what it talks to); agora-lib.values deep-merges the
chart's values (and the umbrella's `global`) over these.
Argo Rollouts' own placeholders ({{args.x}}) are written escaped where they occur.
*/}}
{{- define "agora-lib.defaults" -}}
# "service" (python -m workers <name>) or "gateway" (python -m gateway).
component: service
# Kubernetes name of every object of this workload and the Agora service name
# (AGORA_SERVICE, certificate CN). Defaults to the chart name.
name: ""
ports:
  grpc: 0
  side: 0
  http: 0
resources:
  requests: {cpu: 250m, memory: 256Mi, ephemeral-storage: 64Mi}
  limits: {cpu: "1", memory: 512Mi, ephemeral-storage: 256Mi}
autoscaling:
  minReplicas: 2
  maxReplicas: 20
  targetCPUUtilizationPercentage: 70
  # Workers also scale on their Temporal task-queue backlog (KEDA, see global.keda).
  queue:
    enabled: true
    targetQueueSize: "10"
    activationTargetQueueSize: "0"
    queueTypes: "workflow,activity"
  # Kafka consumers also scale on their consumer group's lag (KEDA's prometheus
  # scaler on agora_kafka_consumer_lag): `group` is the service's consumer group,
  # `targetLagPerPod` the records of lag per pod (KEDA asks for the group's total
  # lag / targetLagPerPod pods, within minReplicas..maxReplicas).
  kafkaLag:
    enabled: false
    group: ""
    targetLagPerPod: "200"
    activationLag: "0"
  # The gateway also scales on the HTTP requests its pods are answering (KEDA's
  # prometheus scaler on gateway_requests_in_flight): KEDA asks for the total in
  # flight / targetPerPod pods, within minReplicas..maxReplicas.
  inFlight:
    enabled: false
    targetPerPod: "50"
    activationTarget: "0"
pdb:
  maxUnavailable: 1
terminationGracePeriodSeconds: 45
preStopSleepSeconds: 5
probes:
  # Startup: up to 3 minutes for the interpreter to load and the side port to answer.
  # /healthz answers from then on, before migrations: they and the other start-up
  # steps are bounded by no probe (a long migration is never killed half-way); the
  # pod stays unready (/readyz "starting") until they are done.
  startup: {path: /healthz, periodSeconds: 5, failureThreshold: 36, timeoutSeconds: 2}
  liveness: {path: /healthz, periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 2}
  readiness: {path: /readyz, periodSeconds: 5, failureThreshold: 2, timeoutSeconds: 3}
# Which engines this workload talks to (NetworkPolicy egress and env).
uses:
  postgres: true
  redis: true
  kafka: true
  temporal: true
  elasticsearch: false
  otel: true
# Agora services whose gRPC API this workload calls, and the Agora workloads
# allowed to call this one's gRPC API.
grpcEgressTo: []
grpcCallers: [gateway]
# Extra environment: plain values and values from Secrets.
env: {}
secretEnv: []
rollout:
  # canary (services) or blueGreen (gateway).
  strategy: canary
  canary:
    steps:
      - setWeight: 10
      - pause: {duration: 5m}
      - setWeight: 50
      - pause: {duration: 5m}
      - setWeight: 100
    maxSurge: "25%"
    maxUnavailable: 0
  blueGreen:
    autoPromotionEnabled: true
    autoPromotionSeconds: 0
    scaleDownDelaySeconds: 600
    previewReplicaCount: 2
  analysis:
    # Each metric is measured every `interval`, the first `initialDelay` after the run
    # starts (a full 2-minute window of the new pods' traffic). A canary's background
    # analysis measures until the rollout completes; a blue-green's pre- and
    # post-promotion analyses take `count` measurements (so scaleDownDelaySeconds must
    # outlast initialDelay + count x interval, or the post-promotion run is cut short).
    # The release is aborted (and rolled back) after `failureLimit` + 1 failed ones.
    initialDelay: 2m
    interval: 1m
    count: 5
    failureLimit: 1
    # A measurement over fewer than `minRequests` calls to the new pods (in its 2-minute
    # window) is inconclusive, not a pass; after `inconclusiveLimit` + 1 inconclusive
    # ones the rollout pauses until someone promotes or aborts it.
    minRequests: 20
    inconclusiveLimit: 2
    # p99 latency ceiling (seconds) and share of server errors (5xx / gRPC
    # INTERNAL, UNAVAILABLE, UNKNOWN, DEADLINE_EXCEEDED, DATA_LOSS) allowed.
    maxP99Seconds: 0.5
    maxErrorRatio: 0.01
    # Prometheus series the analysis reads for services: agora.grpc's rpc.server.duration
    # histogram (rpc_method, rpc_code labels); server faults are the codes below.
    # (The gateway's analysis reads gateway_request_duration_seconds / gateway_requests_total.)
    latencyBucketMetric: rpc_server_duration_seconds_bucket
    requestCountMetric: rpc_server_duration_seconds_count
    errorSelector: 'rpc_code=~"UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS"'
ingress:
  enabled: false
  className: nginx
  host: ""
  tlsSecretName: ""
  annotations: {}
serviceAccount:
  annotations: {}
podAnnotations: {}
# This workload's own image, a digest or a tag of global.image.repository, to release
# it alone (its canary only); empty: global.image's.
image:
  tag: ""
  digest: ""
nodeSelector: {}
tolerations: []
priorityClassName: ""
global:
  # Image of every workload (one image, see Dockerfile). Prefer a digest in production.
  image:
    repository: ghcr.io/agora/agora
    tag: "0.1.0"
    digest: ""
    pullPolicy: IfNotPresent
  imagePullSecrets: []
  # The deployment environment every pod's telemetry carries
  # (deployment.environment.name): staging shares production's collector.
  environment: production
  logLevel: INFO
  traceSampleRatio: "0.1"
  # Agora's gRPC ports (every pod needs all of them to dial its peers) and the
  # gateway's ports, same numbers as the local stack (agora/config.py BASE_PORTS).
  grpcPorts: {identity: 15001, catalog: 15002, search: 15003, inventory: 15004, orders: 15005, payments: 15006, audit: 15007}
  uid: 10001
  pki:
    # cert-manager issuer that signs every workload's certificate (the umbrella
    # creates the Issuer "agora-ca"; point this at a ClusterIssuer/Vault/... instead).
    issuerRef: {name: agora-ca, kind: Issuer, group: cert-manager.io}
    # Where the process reads <mountPath>/<name>/{ca.crt,tls.crt,tls.key} (AGORA_PKI_DIR).
    mountPath: /var/run/agora/pki
    duration: 2160h
    renewBefore: 360h
    clusterDomain: cluster.local
  # The payload codec's key ring (every Temporal client encrypts workflow inputs and
  # results with it): a Secret the operator creates (docs/deploy.md), holding
  # `codec-keys.json`, mounted read-only here (AGORA_CODEC_KEYS_FILE).
  codecKeys:
    secretName: agora-codec-keys
    mountPath: /var/run/agora/codec
  # External engines: address, port and the NetworkPolicy peers that select them.
  temporal:
    address: temporal-frontend.temporal.svc:7233
    namespace: default
    port: 7233
    # Where people open the Temporal web UI (AGORA_TEMPORAL_UI_URL): the base of the
    # workflow links in order answers and audit exports, and the origin the codec
    # endpoint lets in (CORS). Empty: links point at the pod's own address.
    uiUrl: ""
    # mTLS to Temporal (Temporal Cloud, or a cluster that asks for client certificates):
    # a Secret in this namespace holding tls.crt and tls.key (and ca.crt), mounted
    # read-only into every workload that uses Temporal (AGORA_TEMPORAL_TLS_CERT, _KEY).
    # Empty: no client certificate (plain TCP, or TLS with AGORA_TEMPORAL_API_KEY).
    tlsSecret: ""
    # true: the Secret's ca.crt is the CA of the server's certificate (a cluster with
    # its own CA), AGORA_TEMPORAL_TLS_CA; false: the system's roots (Temporal Cloud).
    tlsServerCA: false
    # Temporal Cloud's API key: the Secret (in this namespace) and key holding it,
    # AGORA_TEMPORAL_API_KEY of every workload that uses Temporal. Not through a
    # chart's secretEnv: a list set there replaces the chart's own (identity's KEK,
    # audit's signing key), and those would not start.
    apiKeySecret: {name: "", key: ""}
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: temporal}}}]
  kafka:
    bootstrap: agora-kafka-kafka-bootstrap.kafka.svc:9092
    port: 9092
    # PLAINTEXT, or SSL for a TLS listener (Strimzi's 9093): AGORA_KAFKA_SECURITY_PROTOCOL.
    securityProtocol: PLAINTEXT
    # With SSL: a Secret in this namespace holding the CA (PEM) the brokers'
    # certificates are checked against (Strimzi: <cluster>-cluster-ca-cert, key ca.crt),
    # mounted read-only into every workload that uses Kafka (AGORA_KAFKA_CA_FILE).
    caSecret: ""
    caSecretKey: ca.crt
    caMountPath: /var/run/agora/kafka-ca
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kafka}}}]
  postgres:
    host: agora-pg-rw.postgres.svc
    port: 5432
    # Secret holding each service's database password: <prefix><service>, key `password`
    # (CloudNativePG managed roles read the same basic-auth secrets).
    passwordSecretPrefix: agora-db-
    passwordSecretKey: password
    # Connections per process (AGORA_DB_POOL_SIZE), as the umbrella's values say.
    poolSize: 10
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: postgres}}}]
  redis:
    url: redis://agora-redis-master.redis.svc:6379/0
    host: agora-redis-master.redis.svc
    port: 6379
    # Redis AUTH: the Secret (in this namespace) and key holding the password
    # (AGORA_REDIS_PASSWORD of every workload); no name, no AUTH.
    passwordSecret: {name: "", key: ""}
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: redis}}}]
  elasticsearch:
    url: https://agora-es-http.elastic.svc:9200
    # The names of search's product indices and aliases (AGORA_SEARCH_INDEX_PREFIX):
    # releases sharing a cluster each need their own.
    indexPrefix: agora-products
    port: 9200
    # For the workloads that use Elasticsearch (search): a Secret in this namespace
    # with the CA of the cluster's HTTP certificate (ECK: <name>-es-http-certs-public,
    # key ca.crt), mounted read-only (AGORA_ELASTICSEARCH_CA_FILE), and the Secret and
    # key of an API key (AGORA_ELASTICSEARCH_API_KEY); empty: not used.
    caSecret: ""
    caSecretKey: ca.crt
    caMountPath: /var/run/agora/elasticsearch-ca
    apiKeySecret: {name: "", key: ""}
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: elastic}}}]
  otel:
    endpoint: http://otel-collector.observability.svc:4317
    port: 4317
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: observability}}}]
  dns:
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
  # Who may scrape the side ports, and who may reach the gateway's public port.
  prometheus:
    address: http://prometheus-operated.monitoring.svc:9090
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}, podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}}]
  ingressController:
    peers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}]
    # The controller pods' addresses or networks (required with the gateway's ingress).
    addresses: []
  rollouts:
    # Argo Rollouts installed: workloads are Rollouts; otherwise Deployments.
    enabled: true
  keda:
    # KEDA installed: workloads scale with a ScaledObject (CPU + Temporal backlog for
    # services, + requests in flight for the gateway); otherwise with a plain CPU HPA.
    enabled: true
    # temporal (KEDA's Temporal scaler) or prometheus (server's approximate_backlog_count).
    trigger: temporal
    # For Temporal Cloud: a TriggerAuthentication holding the API key or mTLS client cert.
    authenticationRef: ""
    pollingInterval: 15
    cooldownPeriod: 300
  # Prometheus Operator PodMonitor of every workload; `labels` make the Prometheus
  # select it (kube-prometheus-stack: release=<its release>).
  podMonitor:
    enabled: true
    interval: 30s
    labels: {release: prometheus}
  topology:
    zoneKey: topology.kubernetes.io/zone
    maxSkew: 1
{{- end -}}

{{/* Deep merge of src into dst (in place); unlike sprig's merges, false and empty values override. */}}
{{- define "agora-lib.deepMerge" -}}
{{- $dst := index . 0 -}}
{{- $src := index . 1 -}}
{{- range $k, $v := $src -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "agora-lib.deepMerge" (list (get $dst $k) $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The merged values as YAML: use with `include "agora-lib.values" . | fromYaml`. */}}
{{- define "agora-lib.values" -}}
{{- $merged := fromYaml (include "agora-lib.defaults" .) -}}
{{- include "agora-lib.deepMerge" (list $merged (deepCopy .Values)) -}}
{{- if not $merged.name }}{{- $_ := set $merged "name" .Chart.Name }}{{- end -}}
{{- toYaml $merged -}}
{{- end -}}
