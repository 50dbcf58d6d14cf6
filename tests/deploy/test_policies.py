"""Policy tests over the rendered manifests: every rule of the deployment holds for
every workload in both environments, and breaking one is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agora import config
from tests.deploy import policy
from tests.deploy.conftest import ENVIRONMENTS, REPO, Manifest

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
    "service-monitor": policy.check_service_monitor,
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


def test_production_survives_a_zone_with_two_thirds_capacity(rendered):
    """Production runs at least one pod per zone: losing a zone keeps >= 2 of 3."""
    for name in policy.WORKLOADS:
        assert policy.min_replicas(rendered["production"], name) >= policy.ZONES


# ---- flows ---------------------------------------------------------------------


def _policy_for(docs: list[Manifest], name: str) -> Manifest:
    labels = policy.pod_labels(docs, name)
    (np,) = [
        p
        for p in policy.find(docs, "NetworkPolicy")
        if p["spec"]["podSelector"] and policy.selects(p["spec"]["podSelector"], labels)
    ]
    return np


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_only_the_gateway_reaches_service_grpc(rendered, env):
    docs = rendered[env]
    for name in policy.SERVICES:
        np = _policy_for(docs, name)
        grpc_port = policy.one(docs, "Service", name)["spec"]["ports"][0]["port"]
        gw = policy.pod_labels(docs, "gateway")
        assert policy.ingress_ports_from(np, gw) == {grpc_port}
        for other in policy.SERVICES:
            assert grpc_port not in policy.ingress_ports_from(np, policy.pod_labels(docs, other))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_gateway_egress_to_every_service_grpc(rendered, env):
    docs = rendered[env]
    np = _policy_for(docs, "gateway")
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
        egress = policy.egress_ports(_policy_for(docs, name))
        assert {
            53,
            ports["postgres"],
            ports["redis"],
            ports["kafka"],
            ports["temporal"],
            ports["otel"],
        } <= egress
        assert (ports["elasticsearch"] in egress) == (name == "search"), name
    gw = policy.egress_ports(_policy_for(docs, "gateway"))
    assert ports["postgres"] not in gw and ports["kafka"] not in gw
    assert {ports["redis"], ports["temporal"]} <= gw


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_prometheus_and_ingress_flows(rendered, env):
    docs = rendered[env]
    for name in policy.WORKLOADS:
        np = _policy_for(docs, name)
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
        plain = {k: v for k, v in env_vars.items() if isinstance(v, str)}
        settings = config.load(plain, service=name)
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
            assert secret["name"] == f"agora-db-{name}"
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
    ("networkPolicy.defaultDeny=false", "orders", policy.check_network_policy),
    ("global.pki.issuerRef.name=nowhere", "audit", policy.check_mtls),
    ("orders.autoscaling.queue.enabled=false", "orders", policy.check_queue_scaling),
]


@pytest.mark.parametrize(("override", "name", "check"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_breaking_a_rule_is_caught(render_with, override: str, name: str, check):
    docs = render_with(override)
    assert check(docs, name), f"{override} went unnoticed"


def test_gateway_cut_off_from_a_service_is_caught(render_with):
    docs = render_with("catalog.grpcCallers={audit}")
    np = _policy_for(docs, "catalog")
    assert not policy.ingress_ports_from(np, policy.pod_labels(docs, "gateway"))


def test_privileged_or_root_changes_are_caught(rendered):
    import copy

    docs = copy.deepcopy(rendered["production"])
    spec = policy.pod_spec(docs, "orders")
    spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    spec["securityContext"]["runAsNonRoot"] = False
    assert len(policy.check_security(docs, "orders")) == 2
    spec["containers"][0]["ports"].append({"name": "grpc", "containerPort": 9000})
    assert policy.check_mtls(docs, "orders")


def test_engines_examples_give_each_service_its_own_database():
    path = Path(REPO / "deploy" / "k8s" / "engines" / "cloudnative-pg.yaml")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (cluster,) = [d for d in docs if d["kind"] == "Cluster"]
    roles = {r["name"]: r for r in cluster["spec"]["managed"]["roles"]}
    dbs = {d["spec"]["name"]: d["spec"]["owner"] for d in docs if d["kind"] == "Database"}
    assert set(roles) == set(policy.SERVICES) == set(dbs)
    assert all(
        dbs[s] == s and roles[s]["passwordSecret"]["name"] == f"agora-db-{s}"
        for s in policy.SERVICES
    )
    assert cluster["spec"]["instances"] >= 3


def test_engine_examples_parse_and_spread_over_zones():
    folder = REPO / "deploy" / "k8s" / "engines"
    files = sorted(folder.glob("*.yaml"))
    assert {f.name for f in files} >= {
        "cloudnative-pg.yaml",
        "strimzi-kafka.yaml",
        "eck-elasticsearch.yaml",
        "temporal-values.yaml",
        "redis-values.yaml",
        "otel-collector-values.yaml",
    }
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert docs, f.name
        if f.name in ("cloudnative-pg.yaml", "eck-elasticsearch.yaml", "redis-values.yaml"):
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
