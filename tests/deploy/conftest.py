"""Offline validation of the Kubernetes deployment: Helm (built from the Go module
proxy by deploy/local/build_helm.sh, cached), the charts under deploy/helm and the
manifests they render. No cluster is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agora import config

REPO = Path(__file__).resolve().parents[2]
HELM_DIR = REPO / "deploy" / "helm"
LIB = "agora-lib"
UMBRELLA = "agora"
SERVICES = config.SERVICES
WORKLOADS = ("gateway", *SERVICES)
THIN_CHARTS = WORKLOADS
ENVIRONMENTS = ("staging", "production")
NAMESPACE = "agora"
# The Kubernetes version the manifests are rendered for and validated against.
KUBE_VERSION = "1.34.0"
ZONES = 3

Manifest = dict[str, Any]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def helm() -> str:
    """The Helm binary: AGORA_HELM, else built (or found cached) in the Agora cache."""
    if os.environ.get("AGORA_HELM"):
        return os.environ["AGORA_HELM"]
    cache = config.load().cache_dir
    _run(["bash", str(REPO / "deploy" / "local" / "build_helm.sh"), str(cache)])
    return str(cache / "bin" / "helm")


@pytest.fixture(scope="session")
def charts(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/helm with dependencies built (file:// only, offline);
    the repository stays free of generated charts/ folders and lock files."""
    root = tmp_path_factory.mktemp("helm") / "helm"
    # symlinks=False resolves agora/rules -> deploy/prometheus/rules
    shutil.copytree(HELM_DIR, root, symlinks=False)
    for chart in THIN_CHARTS:
        _run([helm, "dependency", "build", str(root / chart)])
    _run([helm, "dependency", "build", str(root / UMBRELLA)])
    return root


def render(helm: str, charts: Path, *args: str, namespace: str = NAMESPACE) -> list[Manifest]:
    out = _run(
        [
            helm,
            "template",
            "agora",
            str(charts / UMBRELLA),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *args,
        ]
    )
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def rendered(helm: str, charts: Path) -> dict[str, list[Manifest]]:
    """The umbrella rendered with each environment's values file."""
    return {
        env: render(helm, charts, "-f", str(charts / UMBRELLA / f"values-{env}.yaml"))
        for env in ENVIRONMENTS
    }


@pytest.fixture(scope="session")
def render_with(helm: str, charts: Path):
    """Render the production values plus extra --set flags (mutation tests)."""

    def _render(*sets: str) -> list[Manifest]:
        args = ["-f", str(charts / UMBRELLA / "values-production.yaml")]
        for item in sets:
            args += ["--set", item]
        return render(helm, charts, *args)

    return _render
