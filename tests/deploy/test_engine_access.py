"""Who may talk to the engines, and what Temporal keeps: the Temporal frontend takes
only clients with a certificate of its CA (Agora's among them, from the umbrella
chart), the server's other services only the server's own internode certificate,
Kafka's listeners admit only Agora's namespaces, and closed workflow histories
outlive the namespaces' retention in the archive."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
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


def kafka_cluster(bootstrap: str) -> dict[str, Any]:
    """The Strimzi Kafka of deploy/k8s/engines/ whose bootstrap Service is `host:port`."""
    host = bootstrap.rsplit(":", 1)[0]
    clusters = {
        f"{d['metadata']['name']}-kafka-bootstrap.{d['metadata']['namespace']}.svc": d
        for path in sorted(ENGINES.glob("strimzi-kafka*.yaml"))
        for d in _engine(path.name)
        if d["kind"] == "Kafka"
    }
    assert host in clusters, f"{bootstrap}: no Kafka of {sorted(clusters)}"
    return clusters[host]


def test_kafka_listeners_admit_only_agoras_namespaces():
    # The clients present no credentials (docs/deploy.md, Known gaps): the listeners'
    # NetworkPolicy peers are all that keeps other pods off the topics. Each release
    # has its own cluster (the topic and consumer group names are the code's), which
    # admits no pod of the other release.
    for env, namespace in AGORA_NAMESPACES.items():
        bootstrap = _agora_values(env)["global"]["kafka"]["bootstrap"]
        listeners = {
            lst["port"]: lst for lst in kafka_cluster(bootstrap)["spec"]["kafka"]["listeners"]
        }
        assert _admitted(listeners[int(bootstrap.rsplit(":", 1)[1])], namespace), env
        others = set(AGORA_NAMESPACES.values()) - {namespace}
        outsiders = ("default", "kafka", "temporal", "observability", "ingress-nginx", *others)
        for listener in listeners.values():
            assert listener.get("networkPolicyPeers"), f"{listener['name']} admits every pod"
            for outsider in outsiders:
                assert not _admitted(listener, outsider), (env, listener["name"], outsider)


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


def _issuer_of(secret: str) -> tuple[str, str, str]:
    """(kind, name, namespace) of the issuer that signs the Secret's certificate, so
    also the CA its ca.crt holds; a ClusterIssuer has no namespace."""
    cert = _certificates()[secret]
    ref = cert["spec"]["issuerRef"]
    namespace = cert["metadata"]["namespace"] if ref["kind"] == "Issuer" else ""
    return ref["kind"], ref["name"], namespace


TEMPORAL_CA = ("ClusterIssuer", "temporal-ca", "")


def _server_tls() -> dict[str, Any]:
    return _temporal_values()["server"]["config"]["tls"]


def _server_file(path: str) -> tuple[str, str]:
    """(Secret, key) behind a file of the server pods."""
    server = _temporal_values()["server"]
    return _secret_of(path, server["additionalVolumeMounts"], server["additionalVolumes"])


def _trusted(paths: list[str]) -> set[tuple[str, str, str]]:
    """The CAs behind a list of CA files of the server pods (each a Secret's ca.crt)."""
    files = [_server_file(path) for path in paths]
    assert all(file == "ca.crt" for _, file in files), paths
    return {_issuer_of(secret) for secret, _ in files}


def _serving_secret(group: str) -> str:
    """The Secret of a TLS group's serving certificate (its certFile and keyFile)."""
    side = _server_tls()[group]["server"]
    assert side["requireClientAuth"] is True, group
    secret, _ = _server_file(side["certFile"])
    assert _server_file(side["keyFile"]) == (secret, "tls.key"), group
    return secret


def _temporal_clients_secret() -> str:
    """The Secret of the web UI's and admin tools' client certificate."""
    values = _temporal_values()["admintools"]
    env = {e["name"]: e["value"] for e in values["additionalEnv"]}
    path = env["TEMPORAL_TLS_CLIENT_CERT_PATH"]
    return _secret_of(path, values["additionalVolumeMounts"], values["additionalVolumes"])[0]


def test_temporal_frontend_requires_a_client_certificate_of_its_ca():
    tls = _server_tls()
    frontend = _serving_secret("frontend")
    _issued_by_temporal_ca(frontend, "server auth")
    trusted = _trusted(tls["frontend"]["server"]["clientCaFiles"])
    assert TEMPORAL_CA in trusted
    # Its clients: the web UI and admin tools, Agora (test below, the ClusterIssuer)
    # and the server's own worker, which presents the internode certificate.
    internode = _serving_secret("internode")
    for client in (_temporal_clients_secret(), internode):
        assert _issuer_of(client) in trusted, f"the frontend refuses {client}"
        assert "client auth" in _certificates()[client]["spec"]["usages"], client
    # The server's own clients check the serving certificate's name and CA.
    client = tls["frontend"]["client"]
    assert client["serverName"] in _certificates()[frontend]["spec"]["dnsNames"]
    assert _trusted(client["rootCaFiles"]) == {_issuer_of(frontend)}


def _pki_object(kind: str, name: str, namespace: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in _engine("temporal-pki.yaml")
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace", "") == namespace
    ]
    return found


def test_temporal_services_trust_only_their_own_internode_ca():
    """History and matching take calls only from a certificate of the internode CA,
    a namespaced Issuer in `temporal` that signs the internode certificate and
    nothing else: the Temporal CA's client certificates (Agora's, the web UI's, the
    admin tools') are refused there, and no other namespace can ask that Issuer."""
    tls = _server_tls()
    internode = _serving_secret("internode")
    issuer = _issuer_of(internode)
    assert issuer != TEMPORAL_CA, "internode certificates come from the clients' CA"
    kind, name, namespace = issuer
    assert (kind, namespace) == ("Issuer", "temporal"), issuer
    assert _trusted(tls["internode"]["server"]["clientCaFiles"]) == {issuer}
    assert _trusted(tls["internode"]["client"]["rootCaFiles"]) == {issuer}
    client = tls["internode"]["client"]
    assert client["serverName"] in _certificates()[internode]["spec"]["dnsNames"]
    signed = [secret for secret in _certificates() if _issuer_of(secret) == issuer]
    assert signed == [internode], f"{issuer} also signs {signed}"
    # The Issuer is a CA whose key is made in its own namespace.
    ca_secret = _pki_object(kind, name, namespace)["spec"]["ca"]["secretName"]
    ca = _certificates()[ca_secret]
    assert ca["spec"]["isCA"] is True and ca["metadata"]["namespace"] == namespace


@pytest.mark.parametrize("component", ["web", "admintools"])
def test_temporals_own_clients_present_a_certificate(component: str):
    # The web UI and the admin tools (whose `temporal` creates the namespaces) would
    # be refused by the frontend without one.
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


def _install_calls(tmp_path: Path) -> list[list[str]]:
    """The calls docs/deploy.md's engine install makes (stand-ins record them)."""
    return _run_recorded(_sh_blocks()[0], tmp_path)


def _index_of(calls: list[list[str]], *words: str) -> int:
    return next(i for i, call in enumerate(calls) if _runs(call, words))


def _runs(call: list[str], words: tuple[str, ...]) -> bool:
    return any(tuple(call[i : i + len(words)]) == words for i in range(len(call)))


def _temporal_cli(calls: list[list[str]], *command: str) -> list[tuple[int, dict[str, str]]]:
    """(position, {flag: value}) of each admin tools `temporal <command>` call."""
    found = []
    for i, call in enumerate(calls):
        if call[:5] == ["kubectl", "-n", "temporal", "exec", "deploy/temporal-admintools"]:
            if _runs(call, ("temporal", *command)):
                words = call[call.index("temporal", 5) + 1 + len(command) :]
                found.append((i, dict(zip(words[::2], words[1::2], strict=True))))
    return found


def _namespaces_created(calls: list[list[str]]) -> dict[str, dict[str, str]]:
    return {
        flags["--namespace"]: flags
        for _, flags in _temporal_cli(calls, "operator", "namespace", "create")
    }


def test_temporal_chart_install_pins_a_0x_release(tmp_path):
    # The values use the 0.x chart's keys (stores under persistence.default and
    # .visibility, top-level sub-chart switches, schema.setup...), which the 1.x
    # chart's _deprecations.tpl refuses: an unpinned install takes 1.x and fails.
    values = _temporal_values()
    assert "default" in values["server"]["config"]["persistence"]
    assert "setup" in values["schema"] and "cassandra" in values
    calls = _install_calls(tmp_path)
    install = calls[_index_of(calls, "helm", "upgrade", "--install", "temporal")]
    assert "--version" in install, "the Temporal chart is installed unpinned"
    version = install[install.index("--version") + 1]
    assert re.fullmatch(r"0\.\d+\.\d+", version), f"not one 0.x release: {version}"


def test_closed_histories_outlive_retention_in_the_archive():
    """The audit export reads each run's history from Temporal (docs/audit.md): past
    the namespace's retention the frontend serves it from the archive, which needs
    archival on for the cluster (with reads) and a provider every server pod reaches
    (not the filestore: a pod's own disk)."""
    server = _temporal_values()["server"]
    assert "archival" in server, "no archival: histories are gone after the retention"
    history = server["archival"]["history"]
    assert history["state"] == "enabled" and history["enableRead"] is True
    (provider,) = history["provider"]
    assert provider in ("s3store", "gstorage"), provider
    scheme = {"s3store": "s3://", "gstorage": "gs://"}[provider]
    # The URI a namespace archives to when its registration enables archival
    # without naming one (the install commands below).
    default = server["namespaceDefaults"]["archival"]["history"]
    assert default["URI"].startswith(scheme)


def test_install_creates_every_agora_namespace_with_history_archival(tmp_path):
    """The chart's namespace Job would register the namespaces with archival off (its
    `temporal operator namespace create` passes no --history-archival-state, and the
    CLI then sends `disabled`, which namespaceDefaults' state does not override): it
    stays off, and the install creates each namespace itself, after the frontend is
    up and before its search attributes."""
    assert not _temporal_values()["server"]["config"]["namespaces"].get("create")
    calls = _install_calls(tmp_path)
    created = _namespaces_created(calls)
    for env in ENVIRONMENTS:
        namespace = _agora_values(env)["global"]["temporal"]["namespace"]
        flags = created.get(namespace)
        assert flags, f"{env}: the Temporal namespace {namespace} is never created"
        assert flags.get("--history-archival-state") == "enabled", namespace
        assert flags.get("--retention"), namespace
        # Without --history-uri the namespace archives to namespaceDefaults' URI
        # (test above).
        assert flags.get("--history-uri", "s3://").startswith(("s3://", "gs://")), namespace
    install = _index_of(calls, "helm", "upgrade", "--install", "temporal")
    creates = _temporal_cli(calls, "operator", "namespace", "create")
    attributes = _temporal_cli(calls, "operator", "search-attribute", "create")
    for i, flags in creates:
        assert i > install, flags["--namespace"]
        later = [j for j, a in attributes if a["--namespace"] == flags["--namespace"]]
        assert later and min(later) > i, f"{flags['--namespace']}: attributes before it exists"


def test_audit_docs_state_the_retention_the_namespaces_have(tmp_path):
    created = _namespaces_created(_install_calls(tmp_path))
    (retention,) = {flags["--retention"] for flags in created.values()}
    assert retention.endswith("d"), retention
    days = f"{retention[:-1]} days"
    text = (REPO / "docs" / "audit.md").read_text()
    assert days in text and "archiv" in text, f"docs/audit.md does not say {days} / archival"


def test_install_makes_what_the_temporal_server_reads_before_installing_it(tmp_path):
    # The server pods read the archive's credentials from a Secret (no pod starts
    # without it) and mount temporal-pki.yaml's certificates.
    calls = _install_calls(tmp_path)
    before = calls[: _index_of(calls, "helm", "upgrade", "--install", "temporal")]
    assert ["kubectl", "apply", "-f", "deploy/k8s/engines/temporal-pki.yaml"] in before
    made = _secrets_created(before)
    for variable in _temporal_values()["server"]["additionalEnv"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["key"] in made.get(("temporal", ref["name"]), {}), variable["name"]
