"""Who may talk to the engines, and what Temporal keeps: the Temporal frontend takes
only clients with a certificate of its CA (Agora's among them, from the umbrella
chart), Kafka's listeners admit only Agora's namespaces, and closed workflow
histories outlive the namespaces' retention in the archive."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from agora import config
from tests.deploy import policy
from tests.deploy.conftest import ENVIRONMENTS, NAMESPACE, REPO, Manifest
from tests.deploy.test_install_docs import _run_recorded, _secrets_created, _sh_blocks

ENGINES = REPO / "deploy" / "k8s" / "engines"
# The Kubernetes namespace of each environment's Agora release (docs/deploy.md).
AGORA_NAMESPACES = {"production": NAMESPACE, "staging": "agora-staging"}


def _engine(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ENGINES / name).read_text()) if d]


def _temporal_values() -> dict[str, Any]:
    (values,) = _engine("temporal-values.yaml")
    return values


def _agora_values(env: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy/helm/agora" / f"values-{env}.yaml").read_text())


def _namespace_selected(selector: dict[str, Any], namespace: str) -> bool:
    """A namespaceSelector against a namespace's own name label (matchLabels and
    matchExpressions, as Kubernetes evaluates them)."""
    labels = {"kubernetes.io/metadata.name": namespace}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        held = {
            "In": value in expr.get("values", []),
            "NotIn": value not in expr.get("values", []),
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[op]
        if not held:
            return False
    return True


def _admitted(listener: dict[str, Any], namespace: str) -> bool:
    """Whether a pod in `namespace` may connect to the listener. No peers: Strimzi's
    NetworkPolicy admits everyone."""
    peers = listener.get("networkPolicyPeers")
    if not peers:
        return True
    return any(
        "namespaceSelector" in peer and _namespace_selected(peer["namespaceSelector"], namespace)
        for peer in peers
    )


# ---- Kafka ---------------------------------------------------------------------------


def test_kafka_listeners_admit_only_agoras_namespaces():
    # The clients present no credentials (docs/deploy.md, Known gaps): the listeners'
    # NetworkPolicy peers are all that keeps other pods off the topics.
    (cluster,) = [d for d in _engine("strimzi-kafka.yaml") if d["kind"] == "Kafka"]
    listeners = {lst["port"]: lst for lst in cluster["spec"]["kafka"]["listeners"]}
    for listener in listeners.values():
        assert listener.get("networkPolicyPeers"), f"{listener['name']} admits every pod"
        for outsider in ("default", "kafka", "temporal", "observability", "ingress-nginx"):
            assert not _admitted(listener, outsider), (listener["name"], outsider)
    for env, namespace in AGORA_NAMESPACES.items():
        port = _agora_values(env)["global"]["kafka"]["bootstrap"].rsplit(":", 1)[1]
        assert _admitted(listeners[int(port)], namespace), (env, port)


def test_namespace_selector_reads_match_expressions():
    selector = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["agora"]}
        ]
    }
    assert _namespace_selected(selector, "agora")
    assert not _namespace_selected(selector, "default")
    assert _namespace_selected({}, "default")  # an empty selector selects every namespace


# ---- Temporal: mTLS ------------------------------------------------------------------------


def _certificates() -> dict[str, dict[str, Any]]:
    """temporal-pki.yaml's Certificates by the Secret they fill."""
    return {
        d["spec"]["secretName"]: d
        for d in _engine("temporal-pki.yaml")
        if d["kind"] == "Certificate"
    }


def _temporal_ca_issuer() -> dict[str, str]:
    (issuer,) = [
        d
        for d in _engine("temporal-pki.yaml")
        if d["kind"] == "ClusterIssuer" and "ca" in d["spec"]
    ]
    return {"name": issuer["metadata"]["name"], "kind": "ClusterIssuer", "group": "cert-manager.io"}


def _secret_of(path: str, mounts: list[dict], volumes: list[dict]) -> tuple[str, str]:
    """(Secret, key) behind a file path of a pod's read-only secret mounts."""
    file = PurePosixPath(path)
    by_name = {v["name"]: v for v in volumes}
    for mount in mounts:
        if file.parent == PurePosixPath(mount["mountPath"]) and mount.get("readOnly"):
            secret = by_name[mount["name"]]["secret"]
            keys = {i["path"]: i["key"] for i in secret.get("items", [])}
            return secret["secretName"], keys.get(file.name, file.name)
    raise AssertionError(f"{path} is on no read-only secret mount")


def _issued_by_temporal_ca(secret: str, usage: str | None = None) -> dict[str, Any]:
    cert = _certificates()[secret]
    assert cert["spec"]["issuerRef"] == _temporal_ca_issuer(), secret
    assert usage is None or usage in cert["spec"]["usages"], (secret, usage)
    return cert


def test_temporal_frontend_requires_a_client_certificate_of_its_ca():
    server = _temporal_values()["server"]
    tls = server["config"]["tls"]
    mounts, volumes = server["additionalVolumeMounts"], server["additionalVolumes"]
    for group in ("frontend", "internode"):
        side = tls[group]["server"]
        assert side["requireClientAuth"] is True, group
        cert = _secret_of(side["certFile"], mounts, volumes)
        assert _secret_of(side["keyFile"], mounts, volumes) == (cert[0], "tls.key"), group
        _issued_by_temporal_ca(cert[0], "server auth")
        # Client certificates must chain to the Temporal CA: each Secret's ca.crt.
        for path in side["clientCaFiles"]:
            secret, file = _secret_of(path, mounts, volumes)
            assert file == "ca.crt", (group, path)
            _issued_by_temporal_ca(secret)
        # The server's own clients check the serving certificate's name and CA.
        client = tls[group]["client"]
        assert client["serverName"] in _certificates()[cert[0]]["spec"]["dnsNames"], group
        for path in client["rootCaFiles"]:
            assert _secret_of(path, mounts, volumes)[1] == "ca.crt", (group, path)
    # The server's worker presents the internode certificate to the frontend.
    internode = _secret_of(tls["internode"]["server"]["certFile"], mounts, volumes)[0]
    _issued_by_temporal_ca(internode, "client auth")


@pytest.mark.parametrize("component", ["web", "admintools"])
def test_temporals_own_clients_present_a_certificate(component: str):
    # The web UI, the admin tools and the namespace Job (the admin tools' settings)
    # would be refused by the frontend without one.
    values = _temporal_values().get(component, {})
    assert values.get("additionalEnv"), f"{component} dials the frontend without a certificate"
    env = {e["name"]: e["value"] for e in values["additionalEnv"]}
    mounts, volumes = values["additionalVolumeMounts"], values["additionalVolumes"]
    names = {"web": ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CA")}.get(
        component,
        (
            "TEMPORAL_TLS_CLIENT_CERT_PATH",
            "TEMPORAL_TLS_CLIENT_KEY_PATH",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        ),
    )
    files = [_secret_of(env[name], mounts, volumes) for name in names]
    assert [file for _, file in files] == ["tls.crt", "tls.key", "ca.crt"], component
    assert len({secret for secret, _ in files}) == 1, component
    _issued_by_temporal_ca(files[0][0], "client auth")


def _client_secret(env: str) -> str:
    secret = _agora_values(env)["global"]["temporal"].get("tlsSecret")
    assert secret, f"{env}: no client certificate for Temporal (global.temporal.tlsSecret)"
    return str(secret)


def _frontend_host(env: str) -> str:
    return _agora_values(env)["global"]["temporal"]["address"].rsplit(":", 1)[0]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_agora_presents_a_client_certificate_of_the_frontends_ca(
    rendered: dict[str, list[Manifest]], env: str
):
    docs = rendered[env]
    secret = _client_secret(env)
    certs = [c for c in policy.find(docs, "Certificate") if c["spec"]["secretName"] == secret]
    assert len(certs) == 1, f"no Certificate fills {secret!r}"
    spec = certs[0]["spec"]
    assert "client auth" in spec["usages"]
    # Issued by the CA the frontend asks client certificates to chain to, which also
    # signs the frontend's certificate for the name Agora dials: the Secret's ca.crt
    # verifies the server (AGORA_TEMPORAL_TLS_CA).
    assert spec["issuerRef"] == _temporal_ca_issuer()
    frontend = _certificates()["temporal-frontend-tls"]["spec"]
    assert _frontend_host(env) in frontend["dnsNames"]
    for name in policy.WORKLOADS:
        pod = policy.pod_spec(docs, name)
        container = pod["containers"][0]
        variables = policy.env_of(container)
        plain = {k: v for k, v in variables.items() if isinstance(v, str)}
        settings = config.load(plain, service=name)
        paths = (settings.temporal_tls_cert, settings.temporal_tls_key, settings.temporal_tls_ca)
        files = [_secret_of(p, container["volumeMounts"], pod["volumes"]) for p in paths]
        assert files == [(secret, "tls.crt"), (secret, "tls.key"), (secret, "ca.crt")], name


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_kedas_temporal_scaler_presents_the_same_certificate(
    rendered: dict[str, list[Manifest]], env: str
):
    docs = rendered[env]
    secret = _client_secret(env)
    triggers = [
        t
        for so in policy.find(docs, "ScaledObject")
        for t in so["spec"]["triggers"]
        if t["type"] == "temporal"
    ]
    assert triggers
    for trigger in triggers:
        ref = trigger.get("authenticationRef", {}).get("name")
        auth = policy.one(docs, "TriggerAuthentication", ref) if ref else None
        assert auth is not None, f"temporal trigger without its TriggerAuthentication: {ref}"
        params = {p["parameter"]: (p["name"], p["key"]) for p in auth["spec"]["secretTargetRef"]}
        assert params == {
            "cert": (secret, "tls.crt"),
            "key": (secret, "tls.key"),
            "ca": (secret, "ca.crt"),
        }


def test_a_client_certificate_without_its_secret_does_not_render(render_with):
    with pytest.raises(pytest.fail.Exception, match=r"global\.temporal\.tlsSecret"):
        render_with("global.temporal.tlsSecret=")


# ---- Temporal: retention and archival ---------------------------------------------------


def test_closed_histories_outlive_retention_in_the_archive():
    """The audit export reads each run's history from Temporal (docs/audit.md): past
    the namespace's retention the frontend serves it from the archive, which needs
    archival on for the cluster (with reads), on for every Agora namespace, and a
    provider every server pod reaches (not the filestore: a pod's own disk)."""
    server = _temporal_values()["server"]
    assert "archival" in server, "no archival: histories are gone after the retention"
    history = server["archival"]["history"]
    assert history["state"] == "enabled" and history["enableRead"] is True
    (provider,) = history["provider"]
    assert provider in ("s3store", "gstorage"), provider
    scheme = {"s3store": "s3://", "gstorage": "gs://"}[provider]
    # The namespace Job registers the namespaces after the server is configured:
    # they take namespaceDefaults' archival state and URI.
    default = server["namespaceDefaults"]["archival"]["history"]
    assert default["state"] == "enabled" and default["URI"].startswith(scheme)
    namespaces = server["config"]["namespaces"]
    assert namespaces["create"] is True
    created = {n["name"] for n in namespaces["namespace"]}
    for env in ENVIRONMENTS:
        assert _agora_values(env)["global"]["temporal"]["namespace"] in created, env


def test_audit_docs_state_the_retention_the_namespaces_have():
    namespaces = _temporal_values()["server"]["config"]["namespaces"]["namespace"]
    (retention,) = {n["retention"] for n in namespaces}
    assert retention.endswith("d"), retention
    days = f"{retention[:-1]} days"
    text = (REPO / "docs" / "audit.md").read_text()
    assert days in text and "archiv" in text, f"docs/audit.md does not say {days} / archival"


def test_install_makes_what_the_temporal_server_reads_before_installing_it(tmp_path):
    # The server pods read the archive's credentials from a Secret (no pod starts
    # without it) and mount temporal-pki.yaml's certificates.
    calls = _run_recorded(_sh_blocks()[0], tmp_path)
    install = next(
        i for i, c in enumerate(calls) if c[:4] == ["helm", "upgrade", "--install", "temporal"]
    )
    before = calls[:install]
    assert ["kubectl", "apply", "-f", "deploy/k8s/engines/temporal-pki.yaml"] in before
    made = _secrets_created(before)
    for variable in _temporal_values()["server"]["additionalEnv"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["key"] in made.get(("temporal", ref["name"]), {}), variable["name"]
