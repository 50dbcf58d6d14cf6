"""The engine examples under deploy/k8s/engines/ hold what the code needs from each
engine: the Kafka topics, the Temporal search attributes (the Temporal namespaces:
test_engine_access.py), the database role Temporal logs in with, Elasticsearch's
zone, the log pipeline."""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import os
import re
import shlex
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from agora import config, kafka
from tests.deploy.conftest import REPO

ENGINES = REPO / "deploy" / "k8s" / "engines"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ENGINES / name).read_text()) if d]


def _of_kind(name: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs(name) if d["kind"] == kind]


# Production's Kafka and staging's own (the code's topic and group names are fixed).
KAFKA_FILES = ("strimzi-kafka.yaml", "strimzi-kafka-staging.yaml")
POSTGRES_FILES = ("cloudnative-pg.yaml", "cloudnative-pg-staging.yaml")


def _topics(file: str) -> list[dict[str, Any]]:
    return _of_kind(file, "KafkaTopic")


# ---- Kafka -----------------------------------------------------------------------


@pytest.mark.parametrize("file", KAFKA_FILES)
def test_every_topic_the_code_uses_is_declared_and_nothing_else(file: str):
    # Auto-creation is off: a topic missing here fails the first produce to it.
    (cluster,) = _of_kind(file, "Kafka")
    assert cluster["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    declared = [t["spec"].get("topicName", t["metadata"]["name"]) for t in _topics(file)]
    wanted = {t for topic in kafka.EVENT_TOPICS for t in (topic, kafka.dlq_topic(topic))}
    assert sorted(declared) == sorted(wanted)


@pytest.mark.parametrize("file", KAFKA_FILES)
def test_topics_survive_a_zone_with_acks_all(file: str):
    (cluster,) = _of_kind(file, "Kafka")
    for topic in _topics(file):
        spec = topic["spec"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]
        assert spec["replicas"] == 3, spec["topicName"]
        assert spec["config"]["min.insync.replicas"] == 2, spec["topicName"]
        assert spec["partitions"] >= 3, spec["topicName"]


@pytest.mark.parametrize("file", KAFKA_FILES)
def test_event_topics_have_a_partition_for_every_consumer_pod(file: str):
    # A group uses at most one consumer per partition: search (two topics) and audit
    # (all of them) scale to their autoscaler's 20 pods on consumer lag.
    partitions = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in _topics(file)}
    from workers.search.consumer import TOPICS as SEARCH_TOPICS

    assert sum(partitions[t] for t in SEARCH_TOPICS) >= 20
    assert sum(partitions[t] for t in kafka.EVENT_TOPICS) >= 20


# ---- Temporal ----------------------------------------------------------------------


def _env_values(env: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy" / "helm" / "agora" / f"values-{env}.yaml").read_text())


TEMPORAL_SERVICES = ("frontend", "history", "matching", "worker")


def _temporal_pod(service: str) -> dict[str, str]:
    """The labels the Temporal chart puts on a server pod (release "temporal")."""
    return {
        "app.kubernetes.io/name": "temporal",
        "app.kubernetes.io/instance": "temporal",
        "app.kubernetes.io/component": service,
        "pod-template-hash": f"{service}-hash",
    }


def _counted_by(constraint: dict[str, Any], pod: dict[str, str], other: dict[str, str]) -> bool:
    """Whether the scheduler counts `other` when spreading `pod` (matchLabels plus
    matchLabelKeys, whose values come from the pod being placed)."""
    wanted = dict(constraint["labelSelector"]["matchLabels"])
    wanted |= {key: pod[key] for key in constraint.get("matchLabelKeys", [])}
    return all(other.get(k) == v for k, v in wanted.items())


def test_each_temporal_service_spreads_over_the_zones():
    # Three replicas anywhere can share a zone: losing it stops that service.
    server = yaml.safe_load((ENGINES / "temporal-values.yaml").read_text())["server"]
    assert server["replicaCount"] >= 3
    for service in TEMPORAL_SERVICES:
        constraints = server.get(service, {}).get("topologySpreadConstraints") or []
        zone = [c for c in constraints if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zone, f"{service} is not spread over the zones"
        (c,) = zone
        assert c["maxSkew"] == 1 and c["whenUnsatisfiable"] == "DoNotSchedule", service
        pod = _temporal_pod(service)
        assert _counted_by(c, pod, pod), f"{service}: its own pods are not counted"
        for other in TEMPORAL_SERVICES:
            if other != service:
                counted = _counted_by(c, pod, _temporal_pod(other))
                assert not counted, f"{service} counts {other}'s pods"


def _search_attribute_commands() -> dict[str, dict[str, str]]:
    """{Temporal namespace: {attribute: type}} from docs/deploy.md's
    `temporal operator search-attribute create` commands."""
    text = (REPO / "docs" / "deploy.md").read_text().replace("\\\n", " ")
    found: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if "temporal operator search-attribute create" not in line:
            continue
        words = shlex.split(line.split("temporal operator search-attribute create", 1)[1])
        options: dict[str, list[str]] = {}
        for flag, value in itertools.pairwise(words):
            if flag.startswith("--"):
                options.setdefault(flag, []).append(value)
        ((namespace,),) = (options["--namespace"],)
        # The CLI pairs the i-th --name with the i-th --type (temporalcli's
        # operator_search_attribute.go), registers those pairs and ignores any
        # name left without a type, yet still says they "have been added".
        names, kinds = options["--name"], options["--type"]
        assert len(names) == len(kinds), f"names without their own --type: {line.strip()}"
        for name, kind in zip(names, kinds, strict=True):
            found.setdefault(namespace, {})[name] = kind
    return found


def test_production_namespace_gets_the_search_attributes_the_workflows_upsert():
    # Only the local dev server registers them by itself (stack/temporal.py); an
    # upsert of an unregistered attribute fails the workflow task.
    from stack.temporal import SEARCH_ATTRIBUTES

    documented = _search_attribute_commands()
    production = _env_values("production")["global"]["temporal"]["namespace"]
    assert documented.get(production) == SEARCH_ATTRIBUTES


def test_temporal_logs_in_with_a_role_the_database_declares():
    temporal = yaml.safe_load((ENGINES / "temporal-values.yaml").read_text())
    (cluster,) = _of_kind("cloudnative-pg.yaml", "Cluster")
    roles = {r["name"]: r for r in cluster["spec"]["managed"]["roles"]}
    owners = {
        d["spec"]["name"]: d["spec"]["owner"] for d in _of_kind("cloudnative-pg.yaml", "Database")
    }
    for store in ("default", "visibility"):
        sql = temporal["server"]["config"]["persistence"][store]["sql"]
        role = roles[sql["user"]]
        assert role["login"] and role["ensure"] == "present"
        assert role["passwordSecret"]["name"] == sql["existingSecret"], store
        assert owners[sql["database"]] == sql["user"], store
        assert sql["host"] == f"{cluster['metadata']['name']}-rw.postgres.svc"
    # The databases are CloudNativePG's to create; the chart only installs the schema.
    assert temporal["schema"]["createDatabase"]["enabled"] is False


@pytest.mark.parametrize("file", POSTGRES_FILES)
def test_a_postgres_failover_loses_no_acknowledged_commit(file: str):
    # CloudNativePG replicates asynchronously by default: a commit acknowledged just
    # before the primary dies (an outbox row, the audit consumer's offsets) can be
    # missing on the standby promoted in its place, for good.
    (cluster,) = _of_kind(file, "Cluster")
    sync = cluster["spec"]["postgresql"].get("synchronous")
    assert sync, "asynchronous replication"
    assert sync["method"] in ("any", "first") and sync["number"] >= 1
    assert sync.get("dataDurability", "required") == "required"
    # One standby (one zone) away, commits still find their synchronous standby.
    assert cluster["spec"]["instances"] - 1 > sync["number"]


def _postgres_cluster(host: str) -> tuple[str, dict[str, Any]]:
    """(file, Cluster) of the CloudNativePG example whose primary is at `host`."""
    for file in POSTGRES_FILES:
        (cluster,) = _of_kind(file, "Cluster")
        meta = cluster["metadata"]
        if host == f"{meta['name']}-rw.{meta['namespace']}.svc":
            return file, cluster
    raise AssertionError(f"no CloudNativePG example serves {host}")


def _max_replicas(docs: list[dict[str, Any]], name: str) -> int:
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == name:
            return int(so["spec"]["maxReplicaCount"])
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return int(hpa["spec"]["maxReplicas"])
    raise AssertionError(f"{name} has no autoscaler")


def _surge(workload: dict[str, Any], pods: int) -> int:
    """How many pods a release of `workload` adds over `pods` while it rolls."""
    strategy = workload["spec"].get("strategy", {})
    surge = (strategy.get("canary") or strategy.get("rollingUpdate") or {}).get("maxSurge", 0)
    if isinstance(surge, str) and surge.endswith("%"):
        return math.ceil(pods * int(surge[:-1]) / 100)
    if strategy.get("blueGreen") is not None:
        return pods  # the preview set, as large
    return int(surge)


@pytest.mark.parametrize("env", ["staging", "production"])
def test_postgres_takes_every_connection_at_full_scale(rendered, env):
    # Each pod's pool (AGORA_DB_POOL_SIZE) plus one for a migration at start, at every
    # service's largest scale and its release's surge over it, plus Temporal's pools
    # where Temporal keeps its databases: a connection refused past max_connections
    # fails activities and readiness exactly when load is highest.
    docs = rendered[env]
    host = _env_values(env)["global"]["postgres"]["host"]
    _, cluster = _postgres_cluster(host)
    needed = 0
    for workload in (d for d in docs if d["kind"] in ("Rollout", "Deployment")):
        (container,) = [
            c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] != "istio"
        ][:1]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "AGORA_DB_POOL_SIZE" in env:
            pods = _max_replicas(docs, workload["metadata"]["name"])
            # A release at full scale adds its surge of new pods before the old ones go.
            pods += _surge(workload, pods)
            needed += pods * (int(env["AGORA_DB_POOL_SIZE"]) + 1)
    assert needed, "no workload opens a database pool"
    temporal = yaml.safe_load((ENGINES / "temporal-values.yaml").read_text())
    stores = [
        temporal["server"]["config"]["persistence"][store]["sql"]
        for store in ("default", "visibility")
    ]
    per_process = sum(sql["maxConns"] for sql in stores if sql["host"] == host)
    needed += temporal["server"]["replicaCount"] * 4 * per_process  # 4 server services
    allowed = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
    assert needed + 20 <= allowed, f"{needed} connections at full scale, {allowed} allowed"


# ---- Elasticsearch -------------------------------------------------------------------


def test_elasticsearch_nodes_know_their_zone():
    (es,) = _of_kind("eck-elasticsearch.yaml", "Elasticsearch")
    zone = "topology.kubernetes.io/zone"
    # ECK copies these node labels onto the pods as annotations...
    copied = es["metadata"]["annotations"]["eck.k8s.elastic.co/downward-node-labels"]
    assert zone in [label.strip() for label in copied.split(",")]
    for node_set in es["spec"]["nodeSets"]:
        config = node_set["config"]
        (container,) = [
            c for c in node_set["podTemplate"]["spec"]["containers"] if c["name"] == "elasticsearch"
        ]
        env = {e["name"]: e for e in container.get("env", [])}
        # ...every ${VAR} of the node's configuration is a variable of its container...
        for value in config.values():
            for var in re.findall(r"\$\{(\w+)\}", str(value)):
                assert var in env, f"{node_set['name']}: ${{{var}}} is not set"
        # ...and the zone attribute is the annotation, through the downward API.
        assert config["node.attr.zone"] == "${ZONE}"
        path = env["ZONE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert path == f"metadata.annotations['{zone}']"
        assert "zone" in config["cluster.routing.allocation.awareness.attributes"].split(",")


# ---- logs, traces and metrics to the backends --------------------------------------------


def _collector(name: str) -> dict[str, Any]:
    return yaml.safe_load((ENGINES / name).read_text())


def _without_nulls(value: Any) -> Any:
    """The config as the chart merges it: a null removes the chart's default."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_gateway_collector_runs_the_production_config():
    production = yaml.safe_load(
        (REPO / "deploy" / "otelcol" / "config.production.yaml").read_text()
    )
    values = _collector("otel-collector-values.yaml")
    config = _without_nulls(values["config"])
    for section in ("extensions", "receivers", "processors", "exporters"):
        assert config[section] == production[section], section
    assert config["service"]["pipelines"] == production["service"]["pipelines"]
    # Every variable the config reads is set on the pods.
    env = {e["name"] for e in values["extraEnvs"]}
    used = set(re.findall(r"\$\{env:(\w+)\}", yaml.safe_dump(config)))
    assert used <= env
    assert values["mode"] == "deployment" and values["fullnameOverride"] == "otel-collector"


def test_agent_ships_every_agora_containers_json_lines_to_the_gateway():
    values = _collector("otel-agent-values.yaml")
    assert values["mode"] == "daemonset" and values["presets"]["logsCollection"]["enabled"]
    config = _without_nulls(values["config"])
    filelog = config["receivers"]["filelog"]
    # The kubelet's path of each Agora pod's `agora` container, in either environment.
    for env, namespace in {"production": "agora", "staging": "agora-staging"}.items():
        path = f"/var/log/pods/{namespace}_orders-7d9f8c6b5-x2x4q_0f3c/agora/0.log"
        assert any(fnmatch.fnmatch(path, pattern) for pattern in filelog["include"]), env
    sidecar = "/var/log/pods/agora_orders-7d9f8c6b5-x2x4q_0f3c/istio-proxy/0.log"
    assert not any(fnmatch.fnmatch(sidecar, pattern) for pattern in filelog["include"])
    operators = [op["type"] for op in filelog["operators"]]
    assert operators[:2] == ["container", "json_parser"]
    assert "trace_parser" in operators
    parser = filelog["operators"][1]
    assert parser["parse_from"] == "body"
    assert parser["timestamp"]["parse_from"] == "attributes.timestamp"
    assert parser["severity"]["parse_from"] == "attributes.level"
    # Only a logs pipeline, to the gateway (whose logs pipeline ends in Loki).
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"logs"} and pipelines["logs"]["receivers"] == ["filelog"]
    (exporter,) = pipelines["logs"]["exporters"]
    gateway = _collector("otel-collector-values.yaml")
    assert config["exporters"][exporter]["endpoint"] == (
        f"{gateway['fullnameOverride']}.observability.svc:4317"
    )
    assert (
        "otlp_http/loki"
        in _without_nulls(gateway["config"])["service"]["pipelines"]["logs"]["exporters"]
    )


def test_agent_parses_what_agora_logs_writes():
    """The json_parser's fields are the ones agora.logs writes, its timestamp layout
    reads the formatter's timestamp."""
    import io
    import logging
    from datetime import datetime, timedelta

    from agora.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("orders")
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("agora.activity").info("reserved", extra={"order_id": "o-1"})
        line = json.loads(stream.getvalue())
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert {"timestamp", "level", "service", "message", "trace_id", "span_id"} <= set(line)
    parser = _collector("otel-agent-values.yaml")["config"]["receivers"]["filelog"]["operators"][1]
    # The Go layout: ISO 8601, fractional seconds (optional when parsing) and a
    # numeric offset, which is what the formatter writes (UTC).
    assert parser["timestamp"]["layout"] == "2006-01-02T15:04:05.999999Z07:00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00", line["timestamp"])
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() == timedelta(0)


def test_gateway_collector_config_is_valid_for_the_collector(tmp_path):
    binary = config.load().cache_dir / "bin" / "otelcol-agora"
    if not binary.exists():  # a skip would let CI pass without validating the config
        pytest.fail(
            f"{binary} is missing: `make run` or `make test` builds it (needs Go), or build"
            f" it alone with `bash deploy/local/build_go_tools.sh {binary.parent.parent}`",
            pytrace=False,
        )
    values = _collector("otel-collector-values.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_without_nulls(values["config"])))
    result = subprocess.run(
        [str(binary), "validate", f"--config={path}"],
        capture_output=True,
        text=True,
        env={**os.environ, **{e["name"]: e["value"] for e in values["extraEnvs"]}},
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("file", POSTGRES_FILES)
def test_the_audit_log_owner_is_declared_and_audit_does_not_inherit_it(file: str):
    # The audit migrations SET ROLE audit_owner; without the role, or with `audit`
    # inheriting it, the pods crash-loop or hold the owner's rights in every session.
    (cluster,) = _of_kind(file, "Cluster")
    roles = {r["name"]: r for r in cluster["spec"]["managed"]["roles"]}
    owner, audit = roles["audit_owner"], roles["audit"]
    assert owner["ensure"] == "present" and owner["login"] is False
    assert audit["inherit"] is False and audit["inRoles"] == ["audit_owner"]
    # The schema grant CloudNativePG cannot declare is the install's one-time step,
    # the statement the local stack runs.
    from stack.postgres import AUDIT_SCHEMA_GRANT

    assert AUDIT_SCHEMA_GRANT in (REPO / "docs" / "deploy.md").read_text()


def test_the_collector_writes_to_the_prometheus_the_chart_reads():
    # It wrote to https://prometheus.monitoring.svc, a Service kube-prometheus-stack
    # does not make (and it serves plain HTTP): the SDK's metrics never arrived.
    values = _collector("otel-collector-values.yaml")
    env = {e["name"]: e["value"] for e in values["extraEnvs"]}
    written = urlsplit(env["PROMETHEUS_REMOTE_WRITE_URL"])
    chart = yaml.safe_load((REPO / "deploy" / "helm" / "agora" / "values.yaml").read_text())
    read = urlsplit(chart["global"]["prometheus"]["address"])
    assert (written.scheme, written.netloc) == (read.scheme, read.netloc)
    assert written.path == "/api/v1/write"
