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

POD = "orders-7d9f8c6b5"  # kube_pod_info's created_by_name: the ReplicaSet


def _pods(*nodes: str) -> list[dict[str, str]]:
    return [
        {
            "series": (
                f'kube_pod_info{{namespace="{NAMESPACE}",created_by_name="{POD}",'
                f'pod="{POD}-{i}",node="{node}"}}'
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


def _case(series: list[dict[str, str]], fires: bool) -> dict[str, Any]:
    alerts = [
        {
            "exp_labels": {"severity": "critical", "created_by_name": POD},
            "exp_annotations": {"summary": f"{POD} runs in fewer than two zones"},
        }
    ]
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {
                "eval_time": "15m",
                "alertname": "AgoraZoneSpreadLost",
                "exp_alerts": alerts if fires else [],
            }
        ],
    }


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
            _case(_pods("n1", "n2") + _nodes(n1=None, n2=None), fires=False),
            # Both pods in zone a: the workload would not survive that zone.
            _case(_pods("n1", "n2") + _nodes(n1="a", n2="a"), fires=True),
            _case(_pods("n1", "n2") + _nodes(n1="a", n2="b"), fires=False),
        ],
    )
