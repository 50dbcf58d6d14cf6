"""The umbrella's own alerts (group agora-deploy of its PrometheusRule), as rendered,
under promtool's unit tests: each shown firing and staying quiet."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import policy
from tests.deploy.conftest import NAMESPACE, Manifest
from tests.unit.test_alert_rules import INSTALL_HINT

WORKLOAD = "orders"
# kube_pod_info's created_by_name: the ReplicaSet, <workload>-<pod-template hash>.
STABLE = f"{WORKLOAD}-7d9f8c6b5"
CANARY = f"{WORKLOAD}-5c4b9d8f7"


def _pods(replica_set: str, *nodes: str) -> list[dict[str, str]]:
    return [
        {
            "series": (
                f'kube_pod_info{{namespace="{NAMESPACE}",created_by_name="{replica_set}",'
                f'pod="{replica_set}-{i}",node="{node}"}}'
            ),
            "values": "1x20",
        }
        for i, node in enumerate(nodes)
    ]


def _nodes(**zones: str | None) -> list[dict[str, str]]:
    """kube_node_labels per node; None: kube-state-metrics does not export the zone."""
    return [
        {
            "series": (
                f'kube_node_labels{{node="{node}"}}'
                if zone is None
                else f'kube_node_labels{{node="{node}",label_topology_kubernetes_io_zone="{zone}"}}'
            ),
            "values": "1x20",
        }
        for node, zone in zones.items()
    ]


def _case(
    series: list[dict[str, str]], alertname: str, alerts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "15m", "alertname": alertname, "exp_alerts": alerts}],
    }


def _zone_case(series: list[dict[str, str]], fires: bool) -> dict[str, Any]:
    alert = {
        "exp_labels": {"severity": "critical", "workload": WORKLOAD},
        "exp_annotations": {"summary": f"{WORKLOAD} runs in fewer than two zones"},
    }
    return _case(series, "AgoraZoneSpreadLost", [alert] if fires else [])


def _rollout_info(phase: str, **labels: str) -> list[dict[str, str]]:
    selector = ",".join(f'{k}="{v}"' for k, v in {"name": WORKLOAD, **labels}.items())
    return [{"series": f'rollout_info{{{selector},phase="{phase}"}}', "values": "1x20"}]


def _rollout_case(series: list[dict[str, str]], fires: bool) -> dict[str, Any]:
    alert = {
        "exp_labels": {"severity": "warning", "name": WORKLOAD},
        "exp_annotations": {"summary": f"Rollout {WORKLOAD} was aborted and rolled back"},
    }
    return _case(series, "AgoraRolloutAborted", [alert] if fires else [])


def _promtool() -> str:
    # Missing, the tests fail: a skip would let CI pass without running the alerts.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return promtool


def _promtool_test(tmp_path: Path, docs: list[Manifest], tests: list[dict[str, Any]]) -> None:
    (rule,) = policy.find(docs, "PrometheusRule")
    (group,) = [g for g in rule["spec"]["groups"] if g["name"] == "agora-deploy"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [group]}))
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [_promtool(), "test", "rules", "test.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zone_spread_alert_fires_only_on_zones_it_knows(rendered, tmp_path):
    _promtool_test(
        tmp_path,
        rendered["production"],
        [
            # kube-state-metrics without the zone label allow-listed: nothing known,
            # nothing fires (it used to fire for every workload).
            _zone_case(_pods(STABLE, "n1", "n2") + _nodes(n1=None, n2=None), fires=False),
            # Both pods in zone a: the workload would not survive that zone.
            _zone_case(_pods(STABLE, "n1", "n2") + _nodes(n1="a", n2="a"), fires=True),
            _zone_case(_pods(STABLE, "n1", "n2") + _nodes(n1="a", n2="b"), fires=False),
        ],
    )


def test_zone_spread_is_the_workloads_not_each_replica_sets(rendered, tmp_path):
    zones = _nodes(n1="a", n2="b", n3="c")
    _promtool_test(
        tmp_path,
        rendered["production"],
        [
            # A paused canary's one pod sits in one zone; the workload spans three.
            _zone_case(_pods(STABLE, "n1", "n2", "n3") + _pods(CANARY, "n1") + zones, fires=False),
            # Old and new pods all in zone a: the workload is in one zone.
            _zone_case(_pods(STABLE, "n1") + _pods(CANARY, "n1") + zones, fires=True),
        ],
    )


def test_rollout_aborted_alert_fires_whichever_label_holds_the_namespace(rendered, tmp_path):
    _promtool_test(
        tmp_path,
        rendered["production"],
        [
            # Argo Rollouts' ServiceMonitor does not honor labels: the controller's
            # namespace in `namespace`, the Rollout's in `exported_namespace`.
            _rollout_case(
                _rollout_info("Degraded", namespace="argo-rollouts", exported_namespace=NAMESPACE),
                fires=True,
            ),
            # A scrape that honors labels keeps the Rollout's namespace in `namespace`.
            _rollout_case(_rollout_info("Degraded", namespace=NAMESPACE), fires=True),
            _rollout_case(
                _rollout_info("Healthy", namespace="argo-rollouts", exported_namespace=NAMESPACE),
                fires=False,
            ),
            _rollout_case(
                _rollout_info("Degraded", namespace="argo-rollouts", exported_namespace="other"),
                fires=False,
            ),
        ],
    )
