"""Policy tests over the rendered manifests: every rule of the deployment holds for
every workload in both environments, and breaking one is caught."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from agora import config
from agora.grpc import CALLERS
from tests.deploy import policy
from tests.deploy.conftest import ENVIRONMENTS, NAMESPACE, REPO, Manifest
from tests.deploy.test_engine_access import kafka_cluster

RULES = {
    "resources": policy.check_resources,
    "probes": policy.check_probes,
    "security": policy.check_security,
    "service-account": policy.check_service_account,
    "pdb": policy.check_pdb,
    "zone-spread": policy.check_spread,
    "zone-failure": policy.check_zone_failure,
    "autoscaling-2-20": policy.check_autoscaling,
    "rollout": policy.check_rollout,
    "network-policy": policy.check_network_policy,
    "mtls": policy.check_mtls,
    "scraped-once": policy.check_scrape,
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", policy.WORKLOADS)
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rule(rendered: dict[str, list[Manifest]], env: str, name: str, rule: str):
    assert RULES[rule](rendered[env], name) == []


@pytest.mark.parametrize("name", policy.SERVICES)
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_workers_scale_on_temporal_backlog(
    rendered: dict[str, list[Manifest]], env: str, name: str
):
    assert policy.check_queue_scaling(rendered[env], name) == []


def test_queue_scaling_through_prometheus_trigger(render_with):
    docs = render_with("global.keda.trigger=prometheus")
    for name in policy.SERVICES:
        assert policy.check_queue_scaling(docs, name) == []


def _triggers(docs: list[Manifest], name: str, metric: str) -> list[dict]:
    """The ScaledObject's prometheus triggers of `name` whose query reads `metric`."""
    (so,) = [
        s for s in policy.find(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name
    ]
    return [
        t
        for t in so["spec"]["triggers"]
        if t["type"] == "prometheus" and re.search(rf"\b{metric}\{{", t["metadata"]["query"])
    ]


def _selector(query: str, metric: str) -> dict[str, str]:
    (labels,) = re.findall(rf"\b{metric}\{{([^}}]*)\}}", query)
    return dict(re.findall(r'(\w+)="([^"]*)"', labels))


def test_prometheus_backlog_trigger_selects_temporal_namespace_as_scraped(render_with):
    # Temporal's ServiceMonitors (deploy/k8s/engines/temporal-values.yaml) do not honor
    # the server's labels: its `namespace` label is scraped as `exported_namespace`,
    # `namespace` being the Temporal server's Kubernetes namespace.
    temporal = yaml.safe_load((REPO / "deploy/k8s/engines/temporal-values.yaml").read_text())
    monitor = temporal["server"]["metrics"]["serviceMonitor"]
    assert not monitor.get("honorLabels")
    # Selected by the Prometheus that scrapes Agora's own PodMonitors (the chart's
    # server-service-monitor.yaml adds additionalLabels to each ServiceMonitor).
    wanted = _values("production")["global"]["podMonitor"]["labels"]
    assert wanted and wanted.items() <= (monitor.get("additionalLabels") or {}).items()
    docs = render_with("global.keda.trigger=prometheus")
    namespace = _values("production")["global"]["temporal"]["namespace"]
    for name in policy.SERVICES:
        (trigger,) = _triggers(docs, name, "approximate_backlog_count")
        selector = _selector(trigger["metadata"]["query"], "approximate_backlog_count")
        assert selector == {"exported_namespace": namespace, "taskqueue": f"agora-{name}"}


def _consumer_groups() -> dict[str, str]:
    """The Kafka consumer group of each service that consumes (workers/<name>/consumer.py)."""
    groups = {}
    for name in policy.SERVICES:
        path = REPO / "workers" / name / "consumer.py"
        if path.exists():
            (groups[name],) = re.findall(r'^GROUP = "([^"]+)"', path.read_text(), re.M)
    return groups


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_kafka_consumers_also_scale_on_their_groups_lag(rendered, env):
    groups = _consumer_groups()
    assert set(groups) == {"search", "audit"}
    for name in policy.SERVICES:
        lag = _triggers(rendered[env], name, "agora_kafka_consumer_lag")
        if name not in groups:
            assert not lag, name
            continue
        (trigger,) = lag
        selector = _selector(trigger["metadata"]["query"], "agora_kafka_consumer_lag")
        # Agora's own series (job agora, scraped in the release's namespace) of its group.
        assert selector == {"job": "agora", "namespace": NAMESPACE, "group": groups[name]}
        assert float(trigger["metadata"]["threshold"]) > 0
        # Alongside the Temporal backlog, not instead of it.
        assert policy.check_queue_scaling(rendered[env], name) == []


def test_consumer_lag_trigger_reads_the_series_agora_kafka_exports():
    """The gauge agora.kafka registers, through the Prometheus exporter the processes
    serve /metrics with, is named and labelled as the lag trigger selects it."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    from agora import kafka

    source = (REPO / "agora" / "kafka.py").read_text()
    (name,) = re.findall(r'create_observable_gauge\(\s*"(\w+)",\s*\[_observe_lag\]', source)
    assert name == "agora_kafka_consumer_lag"
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    key = ("search-indexer", "catalog.events", 3)
    kafka._lag[key] = 42
    try:
        provider.get_meter("agora.kafka").create_observable_gauge(name, [kafka._observe_lag])
        text = generate_latest(registry).decode()
    finally:
        del kafka._lag[key]
        provider.shutdown()
    (series,) = [line for line in text.splitlines() if line.startswith(name + "{")]
    assert {"group": "search-indexer", "topic": "catalog.events", "partition": "3"}.items() <= (
        _selector(series, name).items()
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_gateway_scales_on_cpu_and_its_requests_in_flight(rendered, env):
    docs = rendered[env]
    assert policy.check_autoscaling(docs, "gateway") == []  # one autoscaler, on CPU, 2-20
    assert policy.check_in_flight_scaling(docs, "gateway") == []
    (trigger,) = _triggers(docs, "gateway", policy.IN_FLIGHT_METRIC)
    selector = _selector(trigger["metadata"]["query"], policy.IN_FLIGHT_METRIC)
    # The gateway's own series (job agora, scraped in the release's namespace).
    assert selector == {"job": "agora", "namespace": NAMESPACE, "service": "gateway"}
    assert trigger["metadata"]["query"].startswith("sum(")  # the total, over targetPerPod
    assert trigger["metadata"]["serverAddress"] == _values(env)["global"]["prometheus"]["address"]
    for name in policy.SERVICES:
        assert not _triggers(docs, name, policy.IN_FLIGHT_METRIC), name


def test_in_flight_trigger_reads_the_series_the_gateway_exports(rendered):
    """The gauge GatewayMetrics records, through the Prometheus exporter the gateway
    serves /metrics with, is named as the trigger selects it."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.metrics import GatewayMetrics

    (trigger,) = _triggers(rendered["production"], "gateway", policy.IN_FLIGHT_METRIC)
    (name,) = re.findall(r"(\w+)\{", trigger["metadata"]["query"])
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        GatewayMetrics(provider).in_flight.add(3)
        text = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    (series,) = [line for line in text.splitlines() if line.startswith(name + "{")]
    assert series.endswith(" 3.0")
    # The labels the trigger selects on are the scrape's, never the gateway's own.
    assert not {"job", "namespace", "service"} & _selector(series, name).keys()


def test_a_consumer_without_its_group_does_not_render(render_with):
    with pytest.raises(pytest.fail.Exception, match=r"kafkaLag\.group"):
        render_with("audit.autoscaling.kafkaLag.group=")


def test_production_survives_a_zone_with_two_thirds_capacity(rendered):
    """Production runs at least one pod per zone: losing a zone keeps >= 2 of 3."""
    for name in policy.WORKLOADS:
        assert policy.min_replicas(rendered["production"], name) >= policy.ZONES


# ---- flows ---------------------------------------------------------------------


# A gRPC client is opened as `channels.get("<service>")` (agora.grpc.Channels) by the
# gateway and by a service's wiring; the caller is the package it is opened in.
_CHANNEL = re.compile(r"\bchannels\.get\((?P<target>[^)]*)\)")


def grpc_calls_in_code() -> set[tuple[str, str]]:
    """(caller, service) for every gRPC client the code opens, read from the source of
    the gateway (gateway/) and of each service (workers/<service>/)."""
    packages = {"gateway": REPO / "gateway"}
    packages |= {name: REPO / "workers" / name for name in policy.SERVICES}
    calls = set()
    for caller, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            for match in _CHANNEL.finditer(path.read_text()):
                literal = re.fullmatch(r"\s*[\"'](\w+)[\"']\s*", match["target"])
                assert literal, f"{path}: a channel to {match['target']!r} cannot be read here"
                calls.add((caller, literal[1]))
    return calls


def test_the_gateway_calls_every_service_in_the_code():
    # Guards the scan above: it finds the gateway's seven clients.
    assert {("gateway", name) for name in policy.SERVICES} <= grpc_calls_in_code()


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_grpc_flows_allowed_are_exactly_the_calls_in_the_code(rendered, env):
    """Each call the code makes is allowed out of the caller and into the service's
    gRPC port (the default deny blocks anything else), and no other gRPC flow is."""
    calls = grpc_calls_in_code()
    egress, ingress = policy.grpc_flows(rendered[env])
    assert egress == calls, f"egress: missing {calls - egress}, extra {egress - calls}"
    assert ingress == calls, f"ingress: missing {calls - ingress}, extra {ingress - calls}"


def test_a_service_cut_off_from_catalog_is_caught(render_with):
    egress, ingress = policy.grpc_flows(render_with("catalog.grpcCallers={gateway}"))
    assert ("orders", "catalog") in egress and ("orders", "catalog") not in ingress
    egress, ingress = policy.grpc_flows(render_with("search.grpcEgressTo=null"))
    assert ("search", "catalog") not in egress and ("search", "catalog") in ingress


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_gateway_egress_to_every_service_grpc(rendered, env):
    docs = rendered[env]
    np = policy.own_network_policy(docs, "gateway")
    for name in policy.SERVICES:
        port = policy.one(docs, "Service", name)["spec"]["ports"][0]["port"]
        rules = [
            r
            for r in np["spec"]["egress"]
            if any(
                policy.selects(p.get("podSelector"), policy.pod_labels(docs, name)) for p in r["to"]
            )
        ]
        assert rules and {p["port"] for r in rules for p in r["ports"]} == {port}, name


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_services_reach_their_engines(rendered, env):
    docs = rendered[env]
    values = _values(env)
    ports = {
        e: values["global"][e]["port"]
        for e in ("postgres", "redis", "kafka", "temporal", "otel", "elasticsearch")
    }
    for name in policy.SERVICES:
        egress = policy.egress_ports(policy.own_network_policy(docs, name))
        assert {
            53,
            ports["postgres"],
            ports["redis"],
            ports["kafka"],
            ports["temporal"],
            ports["otel"],
        } <= egress
        assert (ports["elasticsearch"] in egress) == (name == "search"), name
    gw = policy.egress_ports(policy.own_network_policy(docs, "gateway"))
    assert ports["postgres"] not in gw and ports["kafka"] not in gw
    assert {ports["redis"], ports["temporal"]} <= gw


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_prometheus_and_ingress_flows(rendered, env):
    docs = rendered[env]
    for name in policy.WORKLOADS:
        np = policy.own_network_policy(docs, name)
        side = next(
            p["port"]
            for p in policy.one(docs, "Service", name)["spec"]["ports"]
            if p["name"] == "side"
        )
        from_ns = {
            peer.get("namespaceSelector", {})
            .get("matchLabels", {})
            .get("kubernetes.io/metadata.name"): {p["port"] for p in rule["ports"]}
            for rule in np["spec"]["ingress"]
            for peer in rule["from"]
        }
        assert from_ns.get("monitoring") == {side}, name
        if name == "gateway":
            http = next(
                p["port"]
                for p in policy.one(docs, "Service", "gateway")["spec"]["ports"]
                if p["name"] == "http"
            )
            assert from_ns.get("ingress-nginx") == {http}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_ingress_controller_reaches_cert_managers_http01_solver(rendered, env):
    # The gateway's certificate comes from an ACME issuer; cert-manager runs its
    # HTTP-01 solver pods in this namespace, which the default deny closed to the
    # ingress controller: the certificate was never issued, nor renewed.
    docs = rendered[env]
    issuers = {
        ingress["metadata"].get("annotations", {}).get("cert-manager.io/cluster-issuer")
        for ingress in policy.find(docs, "Ingress")
    }
    assert issuers - {None}, "no ingress names an ACME issuer: nothing to check"
    assert policy.one(docs, "NetworkPolicy", "agora-default-deny")
    solver = policy.one(docs, "NetworkPolicy", "agora-acme-http01-solver")
    assert solver is not None
    solver_pod = {"acme.cert-manager.io/http01-solver": "true"}
    assert policy.selects(solver["spec"]["podSelector"], solver_pod)
    [rule] = solver["spec"]["ingress"]
    assert rule["from"] == _values(env)["global"]["ingressController"]["peers"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8089}]


def _values(env: str) -> dict:
    base = yaml.safe_load((REPO / "deploy/helm/agora/values.yaml").read_text())
    over = yaml.safe_load((REPO / f"deploy/helm/agora/values-{env}.yaml").read_text())

    def merge(a, b):
        for k, v in b.items():
            a[k] = (
                merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            )
        return a

    return merge(base, over)


# ---- configuration the processes actually read ---------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pod_environment_is_what_agora_config_reads(rendered, env):
    """Every AGORA_* variable the charts set is read by agora/config.py, and the
    settings it yields point at the engines and peers of the values file."""
    source = (REPO / "agora" / "config.py").read_text()
    prefixes = ("AGORA_PORT_", "AGORA_DB_PASSWORD_", "AGORA_GRPC_HOST_")
    values = _values(env)["global"]
    for name in policy.WORKLOADS:
        container = policy.pod_spec(rendered[env], name)["containers"][0]
        env_vars = policy.env_of(container)
        for var in env_vars:
            if var.startswith("AGORA_") and not var.startswith(prefixes):
                assert f'"{var}"' in source, f"{name}: {var} is not read by agora/config.py"
        settings = policy.settings_of(env_vars, name)
        assert settings.profile == "prod" and settings.service == name
        assert settings.temporal_address == values["temporal"]["address"]
        assert settings.kafka_bootstrap == values["kafka"]["bootstrap"]
        assert settings.redis_url == values["redis"]["url"]
        assert str(settings.pki_dir) == values["pki"]["mountPath"]
        for svc in policy.SERVICES:
            service = policy.one(rendered[env], "Service", svc)
            assert settings.grpc_host(svc) == service["metadata"]["name"]
            assert settings.grpc_port(svc) == service["spec"]["ports"][0]["port"]
        if name != "gateway":
            assert (
                f"@{values['postgres']['host']}:{values['postgres']['port']}/{name}"
                in settings.db_dsn(name)
            )
            secret = env_vars[f"AGORA_DB_PASSWORD_{name.upper()}"]["secretKeyRef"]
            assert secret["name"] == f"{values['postgres']['passwordSecretPrefix']}{name}"
            port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert settings.side_port(name) == port_names["side"]
            assert settings.grpc_port(name) == port_names["grpc-mtls"]
        else:
            assert settings.ports["gateway"] == next(
                p["containerPort"] for p in container["ports"] if p["name"] == "http"
            )
        assert container["command"] == (
            ["python", "-m", "gateway"] if name == "gateway" else ["python", "-m", "workers", name]
        )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_one_image_everywhere(rendered, env):
    images = {policy.pod_spec(rendered[env], n)["containers"][0]["image"] for n in policy.WORKLOADS}
    assert len(images) == 1
    assert not images.pop().endswith(":latest")


def test_production_image_by_digest(render_with):
    digest = "sha256:" + "a" * 64
    docs = render_with(f"global.image.digest={digest}")
    for n in policy.WORKLOADS:
        assert policy.pod_spec(docs, n)["containers"][0]["image"].endswith(f"@{digest}")


def test_one_service_can_be_released_on_its_own_image(render_with):
    # `helm upgrade --reuse-values --set orders.image.digest=…`: only orders changes
    # (before, only global.image was read, so every workload rolled for one service).
    digest, own = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    docs = render_with(f"global.image.digest={digest}", f"orders.image.digest={own}")
    images = {n: policy.pod_spec(docs, n)["containers"][0]["image"] for n in policy.WORKLOADS}
    assert images.pop("orders").endswith(f"@{own}")
    assert all(image.endswith(f"@{digest}") for image in images.values()), images
    tagged = render_with(f"global.image.digest={digest}", "catalog.image.tag=0.2.0")
    assert policy.pod_spec(tagged, "catalog")["containers"][0]["image"].endswith(":0.2.0")
    # Its pods say the version they run (dashboards and rules read the label).
    labels = policy.find(tagged, "Rollout", "catalog")[0]["spec"]["template"]["metadata"]
    assert labels["labels"]["app.kubernetes.io/version"] == "0.2.0"


def test_prometheus_rule_includes_every_rules_file(rendered):
    rules_dir = REPO / "deploy" / "prometheus" / "rules"
    wanted = set()
    for path in [*rules_dir.glob("*.yaml"), *rules_dir.glob("*.yml")]:
        doc = yaml.safe_load(path.read_text()) or {}
        wanted |= {g["name"] for g in doc.get("groups", [])}
    for env in ENVIRONMENTS:
        (rule,) = policy.find(rendered[env], "PrometheusRule")
        names = {g["name"] for g in rule["spec"]["groups"]}
        assert wanted <= names
        assert "agora-deploy" in names


# ---- a chart change that breaks a rule fails ------------------------------------

BREAKAGES = [
    ("orders.autoscaling.maxReplicas=50", "orders", policy.check_autoscaling),
    ("gateway.autoscaling.minReplicas=1", "gateway", policy.check_autoscaling),
    ("global.topology.maxSkew=2", "catalog", policy.check_spread),
    ("global.topology.zoneKey=kubernetes.io/hostname", "audit", policy.check_spread),
    ("payments.pdb.maxUnavailable=5", "payments", policy.check_pdb),
    ("search.resources.limits.memory=8Mi", "search", policy.check_resources),
    ("identity.probes.readiness.path=/healthz", "identity", policy.check_probes),
    ("inventory.rollout.strategy=blueGreen", "inventory", policy.check_rollout),
    ("gateway.rollout.strategy=canary", "gateway", policy.check_rollout),
    ("orders.rollout.canary.steps[0].setWeight=30", "orders", policy.check_rollout),
    ("gateway.rollout.blueGreen.scaleDownDelaySeconds=120", "gateway", policy.check_rollout),
    ("gateway.rollout.analysis.initialDelay=20m", "gateway", policy.check_rollout),
    ("networkPolicy.defaultDeny=false", "orders", policy.check_network_policy),
    ("global.pki.issuerRef.name=nowhere", "audit", policy.check_mtls),
    ("orders.autoscaling.queue.enabled=false", "orders", policy.check_queue_scaling),
    ("gateway.autoscaling.inFlight.enabled=false", "gateway", policy.check_in_flight_scaling),
    ("catalog.autoscaling.minReplicas=1", "catalog", policy.check_zone_failure),
]


@pytest.mark.parametrize(("override", "name", "check"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_breaking_a_rule_is_caught(render_with, override: str, name: str, check):
    docs = render_with(override)
    assert check(docs, name), f"{override} went unnoticed"


@pytest.mark.parametrize("breakage", ["default account", "token mounted", "account missing"])
def test_a_workload_on_a_token_bearing_service_account_is_caught(rendered, breakage: str):
    """No values override can break it (the account and its automount: false are
    the chart's own), so the rendered manifests are changed instead."""
    docs = copy.deepcopy(rendered["production"])
    name = "orders"
    account = policy.pod_spec(docs, name)["serviceAccountName"]
    if breakage == "default account":
        policy.pod_spec(docs, name)["serviceAccountName"] = "default"
    elif breakage == "token mounted":
        policy.one(docs, "ServiceAccount", account)["automountServiceAccountToken"] = True
    else:
        docs.remove(policy.one(docs, "ServiceAccount", account))
    assert policy.check_service_account(docs, name)


def test_gateway_cut_off_from_a_service_is_caught(render_with):
    docs = render_with("catalog.grpcCallers={audit}")
    np = policy.own_network_policy(docs, "catalog")
    assert not policy.ingress_ports_from(np, policy.pod_labels(docs, "gateway"))


def test_pods_scraped_through_both_blue_green_services_are_caught(rendered):
    """A ServiceMonitor selecting the workload's Services (as the chart once had)
    makes two targets of every gateway pod once `gateway` and `gateway-preview`
    select the same (promoted) pods."""
    docs = copy.deepcopy(rendered["production"])
    monitor = policy.one(docs, "PodMonitor", "gateway")
    docs.remove(monitor)
    docs.append(
        {
            "kind": "ServiceMonitor",
            "metadata": {"name": "gateway"},
            "spec": {"selector": monitor["spec"]["selector"], "endpoints": [{"port": "side"}]},
        }
    )
    assert len(policy.scrapers(docs, "gateway")) == 2
    assert policy.check_scrape(docs, "gateway")


def test_privileged_or_root_changes_are_caught(rendered):
    docs = copy.deepcopy(rendered["production"])
    spec = policy.pod_spec(docs, "orders")
    spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    spec["securityContext"]["runAsNonRoot"] = False
    assert len(policy.check_security(docs, "orders")) == 2
    spec["containers"][0]["ports"].append({"name": "grpc", "containerPort": 9000})
    assert policy.check_mtls(docs, "orders")


@pytest.mark.parametrize(
    ("file", "others", "secret_prefix"),
    [
        # Production's cluster also holds Temporal's own role and databases
        # (tests/deploy/test_engines.py); staging's holds staging's services only.
        ("cloudnative-pg.yaml", {"temporal"}, "agora-db-"),
        ("cloudnative-pg-staging.yaml", set(), "agora-staging-db-"),
    ],
)
def test_engines_examples_give_each_service_its_own_database(
    file: str, others: set[str], secret_prefix: str
):
    path = Path(REPO / "deploy" / "k8s" / "engines" / file)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (cluster,) = [d for d in docs if d["kind"] == "Cluster"]
    roles = {r["name"]: r for r in cluster["spec"]["managed"]["roles"]}
    dbs = {d["spec"]["name"]: d["spec"]["owner"] for d in docs if d["kind"] == "Database"}
    # Plus the audit log's owner, which logs in nowhere.
    assert set(roles) == {*policy.SERVICES, *others, "audit_owner"}
    assert roles["audit_owner"]["login"] is False
    assert {db: owner for db, owner in dbs.items() if owner not in others} == {
        s: s for s in policy.SERVICES
    }
    secrets = {s: roles[s]["passwordSecret"]["name"] for s in policy.SERVICES}
    assert secrets == {s: f"{secret_prefix}{s}" for s in policy.SERVICES}
    assert cluster["spec"]["instances"] >= 3


def test_engine_examples_parse_and_spread_over_zones():
    folder = REPO / "deploy" / "k8s" / "engines"
    files = sorted(folder.glob("*.yaml"))
    assert {f.name for f in files} >= {
        "cloudnative-pg.yaml",
        "cloudnative-pg-staging.yaml",
        "strimzi-kafka.yaml",
        "strimzi-kafka-staging.yaml",
        "eck-elasticsearch.yaml",
        "temporal-values.yaml",
        "redis-values.yaml",
        "otel-collector-values.yaml",
    }
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert docs, f.name
        spread = (
            "cloudnative-pg.yaml",
            "cloudnative-pg-staging.yaml",
            "eck-elasticsearch.yaml",
            "redis-values.yaml",
        )
        if f.name in (*spread, "temporal-values.yaml"):
            assert "topology.kubernetes.io/zone" in f.read_text(), f.name


# Head sampling: every trace in staging (low traffic, debugging), one in ten in
# production; each hop follows the caller's decision (agora.telemetry.sampler).
SAMPLE_RATIO = {"staging": 1.0, "production": 0.1}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_workload_samples_traces_at_its_environments_ratio(rendered, env):
    for name in policy.WORKLOADS:
        container = policy.pod_spec(rendered[env], name)["containers"][0]
        plain = {k: v for k, v in policy.env_of(container).items() if isinstance(v, str)}
        assert float(plain["AGORA_TRACE_SAMPLE_RATIO"]) == SAMPLE_RATIO[env], name
        settings = config.load(plain, service=name)
        assert settings.tracing_enabled, f"{env}: {name} has tracing switched off"
        assert settings.trace_sample_ratio == SAMPLE_RATIO[env]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_gateway_behind_the_ingress_trusts_forwarded_addresses_from_the_controller_only(
    rendered, env
):
    container = policy.pod_spec(rendered[env], "gateway")["containers"][0]
    plain = {k: v for k, v in policy.env_of(container).items() if isinstance(v, str)}
    settings = config.load(plain, service="gateway")
    assert settings.gateway_trusted_proxies == ("10.0.0.0/8",)


def test_an_ingress_without_the_controllers_addresses_does_not_render(render_with):
    with pytest.raises(pytest.fail.Exception, match=r"ingressController\.addresses"):
        render_with("global.ingressController.addresses=null")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_workload_has_what_the_prod_profile_requires_to_start(rendered, env):
    # In the prod profile nothing is generated locally: the codec's key ring (every
    # Temporal client), and audit's signing key, must come from Secrets.
    for name in policy.WORKLOADS:
        spec = policy.pod_spec(rendered[env], name)
        container = spec["containers"][0]
        variables = policy.env_of(container)
        plain = {k: v for k, v in variables.items() if isinstance(v, str)}
        settings = config.load(plain, service=name)
        assert settings.profile == "prod"
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        ring = Path(settings.codec_keys_file)
        assert mounted.get(str(ring.parent)) == "codec-keys", name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["codec-keys"]["secret"]["secretName"] == "agora-codec-keys"
        if name == "audit":
            assert "AGORA_AUDIT_SIGNING_KEY" in variables
            assert not isinstance(variables["AGORA_AUDIT_SIGNING_KEY"], str)  # from a Secret


# ---- how the workloads reach the engines: TLS and credentials --------------------

ENGINES = REPO / "deploy" / "k8s" / "engines"


def _engine_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ENGINES / name).read_text()) if d]


def _mounted_secret(spec: dict, container: dict, path: str) -> tuple[str, str] | None:
    """(Secret, key) of the read-only secret volume holding the file `path`."""
    folder, file = path.rsplit("/", 1)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in container["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        if m["mountPath"] == folder and m.get("readOnly") and secret:
            keys = {i["path"]: i["key"] for i in secret.get("items", [])}
            if file in keys:
                return secret["secretName"], keys[file]
    return None


def _settings_and_env(docs: list[Manifest], name: str):
    spec = policy.pod_spec(docs, name)
    container = spec["containers"][0]
    env = policy.env_of(container)
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    return spec, container, env, config.load(plain, service=name)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_kafka_clients_speak_what_the_listener_they_dial_speaks(rendered, env):
    """The bootstrap port is one of Strimzi's listeners; TLS there means SSL verified
    against the cluster CA, mounted from its Secret; plain means PLAINTEXT."""
    values = _values(env)["global"]["kafka"]
    cluster = kafka_cluster(values["bootstrap"])
    listeners = {lst["port"]: lst["tls"] for lst in cluster["spec"]["kafka"]["listeners"]}
    port = int(values["bootstrap"].rsplit(":", 1)[1])
    assert port == values["port"] and port in listeners
    tls = listeners[port]
    for name in policy.SERVICES:
        spec, container, variables, settings = _settings_and_env(rendered[env], name)
        assert settings.kafka_security_protocol == ("SSL" if tls else "PLAINTEXT"), name
        if tls:
            assert _mounted_secret(spec, container, settings.kafka_ca_file) == (
                f"{cluster['metadata']['name']}-cluster-ca-cert",
                "ca.crt",
            ), name
        else:
            assert not settings.kafka_ca_file and "AGORA_KAFKA_CA_FILE" not in variables
    assert env != "production" or tls, "production reaches Kafka over TLS"
    # The gateway has no Kafka client (and no egress to Kafka).
    _, _, variables, _ = _settings_and_env(rendered[env], "gateway")
    assert "AGORA_KAFKA_CA_FILE" not in variables


def test_an_unknown_kafka_protocol_does_not_render(render_with):
    with pytest.raises(pytest.fail.Exception, match=r"securityProtocol"):
        render_with("global.kafka.securityProtocol=SASL_SSL")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_workload_authenticates_to_redis_with_its_secret(rendered, env):
    redis = yaml.safe_load((ENGINES / "redis-values.yaml").read_text())["auth"]
    assert redis["enabled"]
    for name in policy.WORKLOADS:
        variables = policy.env_of(policy.pod_spec(rendered[env], name)["containers"][0])
        ref = variables["AGORA_REDIS_PASSWORD"]["secretKeyRef"]
        assert ref == {"name": redis["existingSecret"], "key": redis["existingSecretPasswordKey"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_only_search_gets_elasticsearchs_ca_and_api_key(rendered, env):
    (es,) = [d for d in _engine_docs("eck-elasticsearch.yaml") if d["kind"] == "Elasticsearch"]
    cluster = es["metadata"]["name"]
    for name in policy.WORKLOADS:
        spec, container, variables, settings = _settings_and_env(rendered[env], name)
        if name != "search":
            assert not settings.elasticsearch_ca_file, name
            assert "AGORA_ELASTICSEARCH_API_KEY" not in variables, name
            assert not {"elasticsearch-ca"} & {v["name"] for v in spec["volumes"]}, name
            continue
        # ECK's names: the Service <name>-es-http, the CA in <name>-es-http-certs-public.
        assert settings.elasticsearch_url.startswith(f"https://{cluster}-es-http.")
        assert _mounted_secret(spec, container, settings.elasticsearch_ca_file) == (
            f"{cluster}-es-http-certs-public",
            "ca.crt",
        )
        ref = variables["AGORA_ELASTICSEARCH_API_KEY"]["secretKeyRef"]
        assert ref == {"name": "agora-es-api-key", "key": "api-key"}


@pytest.mark.parametrize("env", ["staging", "production"])
def test_workflow_links_point_where_people_open_the_temporal_ui(rendered, env):
    # Without it, order answers and audit exports link to http://0.0.0.0:<port>/…
    # (the pod's own bind address) and the codec endpoint admits no UI origin.
    for name in ("gateway", "audit"):
        container = policy.pod_spec(rendered[env], name)["containers"][0]
        plain = {k: v for k, v in policy.env_of(container).items() if isinstance(v, str)}
        url = config.load(plain, service=name).temporal_ui_url
        assert url.startswith("https://") and "0.0.0.0" not in url, (env, name, url)


TEMPORAL_CLIENT_SECRET = "agora-temporal-client"


@pytest.mark.parametrize(
    ("server_ca", "files"),
    [
        (False, {"cert": "tls.crt", "key": "tls.key"}),
        (True, {"cert": "tls.crt", "key": "tls.key", "ca": "ca.crt"}),
    ],
)
def test_temporal_client_certificate_is_mounted_from_its_secret(render_with, server_ca, files):
    """mTLS to Temporal (Cloud): the processes read the certificate, key and CA as
    files (agora.temporal.tls_config), mounted read-only from global.temporal.tlsSecret;
    the server's CA only when it is not one of the system's roots."""
    docs = render_with(
        f"global.temporal.tlsSecret={TEMPORAL_CLIENT_SECRET}",
        f"global.temporal.tlsServerCA={str(server_ca).lower()}",
    )
    for name in policy.WORKLOADS:
        spec, container, _, settings = _settings_and_env(docs, name)
        paths = {
            "cert": settings.temporal_tls_cert,
            "key": settings.temporal_tls_key,
            "ca": settings.temporal_tls_ca,
        }
        assert {k for k, path in paths.items() if path} == set(files), name
        for kind, key in files.items():
            assert _mounted_secret(spec, container, paths[kind]) == (
                TEMPORAL_CLIENT_SECRET,
                key,
            ), (name, kind)


def test_temporal_clouds_api_key_reaches_every_workload_and_keeps_their_own_secrets(
    render_with,
):
    # docs/deploy.md once said to pass it through each chart's secretEnv: a list set
    # there replaces the chart's own, and identity (its KEK) and audit (its signing
    # key) then could not start in the prod profile.
    docs = render_with(
        "global.temporal.apiKeySecret.name=agora-temporal-api-key",
        "global.temporal.apiKeySecret.key=api-key",
    )
    for name in policy.WORKLOADS:
        variables = policy.env_of(policy.pod_spec(docs, name)["containers"][0])
        ref = variables["AGORA_TEMPORAL_API_KEY"]["secretKeyRef"]
        assert ref == {"name": "agora-temporal-api-key", "key": "api-key"}, name
    identity = policy.env_of(policy.pod_spec(docs, "identity")["containers"][0])
    audit = policy.env_of(policy.pod_spec(docs, "audit")["containers"][0])
    assert "AGORA_IDENTITY_KEK" in identity
    assert "AGORA_AUDIT_SIGNING_KEY" in audit


def test_no_temporal_api_key_by_default_and_none_without_its_key(rendered, render_with):
    for name in policy.WORKLOADS:
        variables = policy.env_of(policy.pod_spec(rendered["production"], name)["containers"][0])
        assert "AGORA_TEMPORAL_API_KEY" not in variables, name
    with pytest.raises(pytest.fail.Exception, match=r"apiKeySecret.key"):
        render_with("global.temporal.apiKeySecret.name=agora-temporal-api-key")


def test_no_temporal_client_certificate_without_its_secret(render_with):
    docs = render_with("global.temporal.tlsSecret=", "temporalClientCertificate.enabled=false")
    assert not policy.find(docs, "TriggerAuthentication")
    for name in policy.WORKLOADS:
        spec, container, variables, _ = _settings_and_env(docs, name)
        assert not {v for v in variables if v.startswith("AGORA_TEMPORAL_TLS_")}, name
        assert "temporal-tls" not in {v["name"] for v in spec["volumes"]}, name
        assert "temporal-tls" not in {m["name"] for m in container["volumeMounts"]}, name


def test_the_services_answer_exactly_the_callers_the_network_policies_let_in(rendered):
    # agora.grpc.CALLERS refuses any other platform certificate (PERMISSION_DENIED);
    # the charts' grpcCallers let the same callers in (the default deny the rest).
    answered = {(caller, service) for service, callers in CALLERS.items() for caller in callers}
    assert answered == grpc_calls_in_code()
    _, ingress = policy.grpc_flows(rendered["production"])
    assert answered == ingress
