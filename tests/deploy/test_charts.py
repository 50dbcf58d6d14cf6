"""helm lint on every chart, helm template of the umbrella with both values files,
and every rendered built-in resource against the Kubernetes schemas."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy import policy
from tests.deploy.conftest import (
    ENVIRONMENTS,
    KUBE_VERSION,
    LIB,
    THIN_CHARTS,
    UMBRELLA,
    Manifest,
)

# Custom resources kubernetes-validate has no schema for; checked structurally here
# and by the policy tests.
CRDS = {
    "Rollout": "argoproj.io/v1alpha1",
    "AnalysisTemplate": "argoproj.io/v1alpha1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "Certificate": "cert-manager.io/v1",
    "Issuer": "cert-manager.io/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}


@pytest.mark.parametrize("chart", [LIB, *THIN_CHARTS, UMBRELLA])
def test_helm_lint(helm: str, charts: Path, chart: str):
    args = [helm, "lint", str(charts / chart), "--strict", "--kube-version", KUBE_VERSION]
    if chart == UMBRELLA:
        for env in ENVIRONMENTS:
            args += ["-f", str(charts / UMBRELLA / f"values-{env}.yaml")]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("chart", THIN_CHARTS)
def test_thin_chart_renders_alone(helm: str, charts: Path, chart: str):
    """Each service chart installs on its own too (e.g. to release one service)."""
    out = subprocess.run(
        [
            helm,
            "template",
            chart,
            str(charts / chart),
            "--namespace",
            "agora",
            "--kube-version",
            KUBE_VERSION,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "kind: Rollout" in out.stdout and f"name: {chart}" in out.stdout
    # Every variable has a value: an empty one (a value only the umbrella sets) fails
    # the process at start (e.g. AGORA_DB_POOL_SIZE, int("")).
    for doc in yaml.safe_load_all(out.stdout):
        if not doc or doc.get("kind") != "Rollout":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            env = container.get("env", [])
            empty = [e["name"] for e in env if "valueFrom" not in e and not e.get("value")]
            assert not empty, f"{chart}: variables without a value: {empty}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_umbrella_renders_every_workload(rendered: dict[str, list[Manifest]], env: str):
    docs = rendered[env]
    for name in policy.WORKLOADS:
        assert policy.workload(docs, name) is not None, f"{env}: {name} not rendered"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"


def _builtin(docs: list[Manifest]) -> list[Manifest]:
    return [d for d in docs if d["kind"] not in CRDS]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_builtin_resources_match_kubernetes_schemas(rendered: dict[str, list[Manifest]], env: str):
    docs = _builtin(rendered[env])
    kinds = {d["kind"] for d in docs}
    # No HorizontalPodAutoscaler: with KEDA every workload has a ScaledObject (the plain
    # HPAs are validated without KEDA, test_without_operators_everything_is_builtin_and_valid).
    assert {"Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pod_templates_match_kubernetes_schemas(rendered: dict[str, list[Manifest]], env: str):
    """A Rollout's pod template is a core PodTemplateSpec: validate it as the
    template of an equivalent Deployment."""
    for name in policy.WORKLOADS:
        w = policy.workload(rendered[env], name)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"selector": w["spec"]["selector"], "template": w["spec"]["template"]},
        }
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_without_operators_everything_is_builtin_and_valid(render_with):
    """Without Argo Rollouts and KEDA the charts fall back to Deployments and CPU HPAs."""
    docs = render_with("global.rollouts.enabled=false", "global.keda.enabled=false")
    assert not policy.find(docs, "Rollout") and not policy.find(docs, "ScaledObject")
    assert len(policy.find(docs, "Deployment")) == len(policy.WORKLOADS)
    assert len(policy.find(docs, "HorizontalPodAutoscaler")) == len(policy.WORKLOADS)
    for doc in _builtin(docs):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    for name in policy.WORKLOADS:
        assert not policy.check_autoscaling(docs, name)
        assert not policy.check_spread(docs, name)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_custom_resources_are_well_formed(rendered: dict[str, list[Manifest]], env: str):
    docs = rendered[env]
    for doc in docs:
        if doc["kind"] in CRDS:
            assert doc["apiVersion"] == CRDS[doc["kind"]], doc["metadata"]["name"]
            assert doc["metadata"]["name"] and isinstance(doc.get("spec"), dict)
    for so in policy.find(docs, "ScaledObject"):
        spec = so["spec"]
        assert {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "triggers"} <= set(spec)
        for t in spec["triggers"]:
            assert t["type"] in ("cpu", "temporal", "prometheus")
            assert all(isinstance(v, str) for v in t["metadata"].values()), (
                "KEDA metadata are strings"
            )
    for cert in policy.find(docs, "Certificate"):
        assert {"secretName", "issuerRef"} <= set(cert["spec"])
        assert cert["spec"]["issuerRef"]["name"]
    for issuer in policy.find(docs, "Issuer"):
        assert len(set(issuer["spec"]) & {"selfSigned", "ca", "acme", "vault"}) == 1
    for pm in policy.find(docs, "PodMonitor"):
        assert pm["spec"]["selector"]["matchLabels"] and pm["spec"]["podMetricsEndpoints"]
    for rule in policy.find(docs, "PrometheusRule"):
        for group in rule["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for r in group["rules"]:
                assert ("alert" in r) != ("record" in r) and r["expr"]
    # Argo Rollouts' Metric fields (v1alpha1 analysis_types.go): a misspelt one is dropped.
    metric_fields = {
        "name", "interval", "initialDelay", "count", "successCondition", "failureCondition",
        "failureLimit", "inconclusiveLimit", "consecutiveErrorLimit", "provider",
    }  # fmt: skip
    for at in policy.find(docs, "AnalysisTemplate"):
        for m in at["spec"]["metrics"]:
            assert "{{args.pod-hash}}" in m["provider"]["prometheus"]["query"]
            assert set(m) <= metric_fields, set(m) - metric_fields
        assert [a["name"] for a in at["spec"]["args"]] == ["pod-hash"]
    for r in policy.find(docs, "Rollout"):
        assert (
            r["spec"]["selector"]["matchLabels"].items()
            <= r["spec"]["template"]["metadata"]["labels"].items()
        )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_platform_ca_keeps_its_key_when_renewed(rendered: dict[str, list[Manifest]], env: str):
    # cert-manager >= 1.18 defaults rotationPolicy to Always: a renewed CA with a new
    # key would not verify against the ca.crt pods already hold, breaking mTLS.
    ca = policy.one(rendered[env], "Certificate", "agora-ca")
    assert ca is not None and ca["spec"]["isCA"]
    assert ca["spec"]["privateKey"] == {
        "algorithm": "ECDSA",
        "size": 256,
        "rotationPolicy": "Never",
    }
