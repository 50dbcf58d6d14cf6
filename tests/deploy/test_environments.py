"""Staging and production share no state. What each release's processes read and
write, as agora/config.py reads it from the rendered pods: its databases, its Redis
database, its Kafka cluster (the code's topic and consumer group names are the same
in both), its product indices. And the database cluster a release dials is one of
deploy/k8s/engines/, holding a role for each service whose password the release reads."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from agora import config
from tests.deploy import policy
from tests.deploy.conftest import ENVIRONMENTS, REPO, Manifest

ENGINES = REPO / "deploy" / "k8s" / "engines"

State = dict[str, set[tuple[Any, ...]]]


def _settings(docs: list[Manifest], name: str) -> tuple[dict[str, Any], config.Settings]:
    variables = policy.env_of(policy.pod_spec(docs, name)["containers"][0])
    return variables, policy.settings_of(variables, name)


def _state(docs: list[Manifest]) -> State:
    """Where the release keeps its state, by store: PostgreSQL (host, port, database),
    Redis (host, port, database), Kafka (the cluster's bootstrap host: one cluster
    listens on several ports), Elasticsearch (host, index prefix)."""
    state: State = {"postgres": set(), "redis": set(), "kafka": set(), "elasticsearch": set()}
    for name in policy.WORKLOADS:
        variables, settings = _settings(docs, name)
        if f"AGORA_DB_PASSWORD_{name.upper()}" in variables:
            dsn = urlsplit(settings.db_dsn(name))
            state["postgres"].add((dsn.hostname, dsn.port, dsn.path))
        redis = urlsplit(settings.redis_url)
        state["redis"].add((redis.hostname, redis.port, redis.path.strip("/") or "0"))
        if "AGORA_KAFKA_SECURITY_PROTOCOL" in variables:
            hosts = settings.kafka_bootstrap.split(",")
            state["kafka"] |= {(host.rsplit(":", 1)[0],) for host in hosts}
        if "AGORA_ELASTICSEARCH_URL" in variables and name == "search":
            es = urlsplit(settings.elasticsearch_url)
            state["elasticsearch"].add((es.hostname, settings.search_index_prefix))
    return state


def test_staging_and_production_share_no_store(rendered: dict[str, list[Manifest]]):
    # Shared, staging's migrations would run on production's databases, its consumers
    # join production's consumer groups, its gateway sign in production's accounts.
    staging, production = (_state(rendered[env]) for env in ("staging", "production"))
    assert all(staging.values()) and all(production.values())
    shared = {store: sorted(staging[store] & production[store]) for store in staging}
    assert not any(shared.values()), f"staging and production share {shared}"


def _postgres_clusters() -> dict[str, tuple[str, dict[str, Any]]]:
    """{the primary's Service host: (file, Cluster)} of every CloudNativePG example."""
    clusters = {}
    for path in sorted(ENGINES.glob("cloudnative-pg*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Cluster":
                meta = doc["metadata"]
                clusters[f"{meta['name']}-rw.{meta['namespace']}.svc"] = (path.name, doc)
    return clusters


def _databases(file: str, cluster: str) -> dict[str, str]:
    docs = yaml.safe_load_all((ENGINES / file).read_text())
    return {
        d["spec"]["name"]: d["spec"]["owner"]
        for d in docs
        if d and d["kind"] == "Database" and d["spec"]["cluster"]["name"] == cluster
    }


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_release_logs_in_to_a_database_cluster_of_its_own(
    rendered: dict[str, list[Manifest]], env: str
):
    clusters = _postgres_clusters()
    used = set()
    for name in policy.SERVICES:
        variables, settings = _settings(rendered[env], name)
        host = urlsplit(settings.db_dsn(name)).hostname
        assert host in clusters, f"{env}: {name} dials {host}, no cluster of {sorted(clusters)}"
        file, cluster = clusters[host]
        used.add(host)
        roles = {r["name"]: r for r in cluster["spec"]["managed"]["roles"]}
        secret = variables[f"AGORA_DB_PASSWORD_{name.upper()}"]["secretKeyRef"]["name"]
        assert roles[name]["passwordSecret"]["name"] == secret, (env, name)
        assert _databases(file, cluster["metadata"]["name"]).get(name) == name, (env, name)
    assert len(used) == 1, f"{env} spreads over {used}"


def test_each_release_s_telemetry_names_its_environment_which_the_collector_keeps(
    rendered: dict[str, list[Manifest]],
):
    # Staging sends its telemetry through production's collector, which stamped all of
    # it production (upsert): staging's traces, sampled at 1.0, passed for production's.
    for env in ENVIRONMENTS:
        for name in policy.WORKLOADS:
            variables = policy.env_of(policy.pod_spec(rendered[env], name)["containers"][0])
            assert variables["OTEL_RESOURCE_ATTRIBUTES"] == f"deployment.environment.name={env}"
    collector = yaml.safe_load((REPO / "deploy" / "otelcol" / "config.production.yaml").read_text())
    (stamp,) = [
        a
        for a in collector["processors"]["resource"]["attributes"]
        if a["key"] == "deployment.environment.name"
    ]
    assert stamp["action"] == "insert", "only where a pod did not say"
