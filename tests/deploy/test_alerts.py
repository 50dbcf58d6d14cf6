"""The umbrella's PrometheusRule, as rendered, under promtool's unit tests: its own
alerts (group agora-deploy) each shown firing and staying quiet, and the alerts of
deploy/prometheus/rules/ firing for their own release's namespace only."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import policy
from tests.deploy.conftest import NAMESPACE, REPO, UMBRELLA, Manifest, render
from tests.unit.test_alert_rules import INSTALL_HINT

STAGING = "agora-staging"
# The promtool unit tests of the rule files (written for the local stack, whose series
# carry no namespace).
FILE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "agora_test.yml"
WORKLOAD = "orders"
# kube_pod_info's created_by_name: the ReplicaSet, <workload>-<pod-template hash>.
STABLE = f"{WORKLOAD}-7d9f8c6b5"
CANARY = f"{WORKLOAD}-5c4b9d8f7"


def _pods(
    replica_set: str, *nodes: str, phase: str = "Running", deleted: bool = False
) -> list[dict[str, str]]:
    """kube-state-metrics' series of one pod per node: its info, its phase and, once
    it is being deleted (Terminating), its deletion timestamp."""
    series = []
    for i, node in enumerate(nodes):
        pod = f'namespace="{NAMESPACE}",pod="{replica_set}-{i}"'
        info = f'kube_pod_info{{{pod},created_by_name="{replica_set}",node="{node}"}}'
        series.append({"series": info, "values": "1x20"})
        series.append(
            {"series": f'kube_pod_status_phase{{{pod},phase="{phase}"}}', "values": "1x20"}
        )
        if phase != "Running":
            running = f'kube_pod_status_phase{{{pod},phase="Running"}}'
            series.append({"series": running, "values": "0x20"})
        if deleted:
            stamp = f"kube_pod_deletion_timestamp{{{pod}}}"
            series.append({"series": stamp, "values": "1700000000x20"})
    return series


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
        "exp_labels": {"severity": "critical", "workload": WORKLOAD, "namespace": NAMESPACE},
        "exp_annotations": {"summary": f"{WORKLOAD} runs in fewer than two zones"},
    }
    return _case(series, "AgoraZoneSpreadLost", [alert] if fires else [])


def _rollout_info(phase: str, **labels: str) -> list[dict[str, str]]:
    selector = ",".join(f'{k}="{v}"' for k, v in {"name": WORKLOAD, **labels}.items())
    return [{"series": f'rollout_info{{{selector},phase="{phase}"}}', "values": "1x20"}]


def _rollout_case(series: list[dict[str, str]], fires: bool) -> dict[str, Any]:
    alert = {
        "exp_labels": {"severity": "warning", "name": WORKLOAD, "namespace": NAMESPACE},
        "exp_annotations": {
            "summary": f"Rollout {WORKLOAD} is Degraded: aborted and rolled back, or past"
            " its progress deadline"
        },
    }
    return _case(series, "AgoraRolloutAborted", [alert] if fires else [])


def _promtool() -> str:
    # Missing, the tests fail: a skip would let CI pass without running the alerts.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return promtool


def _promtool_test(
    tmp_path: Path, docs: list[Manifest], tests: list[dict[str, Any]], group: str = "agora-deploy"
) -> None:
    """Run promtool's tests on the rendered rule groups (`group`, or all of them: "")."""
    (rule,) = policy.find(docs, "PrometheusRule")
    groups = [g for g in rule["spec"]["groups"] if g["name"] == group or not group]
    assert groups, group
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
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


def test_zone_spread_counts_only_pods_that_serve(rendered, tmp_path):
    zones = _nodes(n1="a", n2="b", n3="c")
    _promtool_test(
        tmp_path,
        rendered["production"],
        [
            # The nodes of zones b and c are lost: their pods stay Running, Terminating,
            # until the nodes return; only the pod in zone a serves.
            _zone_case(_pods(STABLE, "n1") + _pods(CANARY, "n2", "n3", deleted=True) + zones, True),
            # Evicted pods stay Failed in their zones; a Pending one serves nowhere yet.
            _zone_case(
                _pods(STABLE, "n1") + _pods(CANARY, "n2", "n3", phase="Failed") + zones, True
            ),
            _zone_case(_pods(STABLE, "n1") + _pods(CANARY, "n2", phase="Pending") + zones, True),
            _zone_case(
                _pods(STABLE, "n1", "n2") + _pods(CANARY, "n3", phase="Failed") + zones, False
            ),
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


def _paused_case(phase: str, minutes: int, fires: bool) -> dict[str, Any]:
    alert = {
        "exp_labels": {"severity": "warning", "name": WORKLOAD, "namespace": NAMESPACE},
        "exp_annotations": {
            "summary": f"Rollout {WORKLOAD} has been paused for 15 minutes: promote or abort it"
        },
    }
    series = [
        {
            "series": (
                f'rollout_info{{name="{WORKLOAD}",namespace="argo-rollouts",'
                f'exported_namespace="{NAMESPACE}",phase="{phase}"}}'
            ),
            "values": f"1x{minutes}",
        }
    ]
    case = _case(series, "AgoraRolloutPaused", [alert] if fires else [])
    case["alert_rule_test"][0]["eval_time"] = f"{minutes}m"
    return case


def test_a_rollout_paused_for_a_person_is_an_alert_its_timed_pauses_are_not(rendered, tmp_path):
    # An inconclusive analysis pauses the rollout until someone promotes or aborts it;
    # the canary's own 5-minute pauses are no alert.
    _promtool_test(
        tmp_path,
        rendered["production"],
        [
            _paused_case("Paused", 20, fires=True),
            _paused_case("Paused", 5, fires=False),
            _paused_case("Progressing", 20, fires=False),
        ],
    )


# ---- the rule files, one PrometheusRule per release ----------------------------------


@pytest.fixture(scope="module")
def staging(helm: str, charts: Path) -> list[Manifest]:
    """The staging release, rendered in its own namespace."""
    values = str(charts / UMBRELLA / "values-staging.yaml")
    return render(helm, charts, "-f", values, namespace=STAGING)


def _gateway_latency(namespace: str, slow: bool) -> list[dict[str, str]]:
    """A minute's 100 requests of one release's gateway, all under 5 ms or all 250-500 ms."""
    counts = {"0.005": 0 if slow else 100, "0.2": 0 if slow else 100, "0.5": 100, "+Inf": 100}
    return [
        {
            "series": (
                f'gateway_request_duration_seconds_bucket{{job="agora",namespace="{namespace}",'
                f'le="{le}"}}'
            ),
            "values": f"0+{count}x20",
        }
        for le, count in counts.items()
    ]


def _latency_case(series: list[dict[str, str]], fires_for: str | None) -> dict[str, Any]:
    alert = {
        "exp_labels": {"severity": "page", "job": "agora", "namespace": fires_for},
        "exp_annotations": {
            "summary": "API p99 latency is 497ms (target 200ms)",
            "description": "The gateway's p99 over 5 minutes has been above 200 ms for 5 minutes.",
            "dashboard": "API latency",
        },
    }
    return _case(series, "ApiLatencyP99High", [alert] if fires_for else [])


def test_staging_load_does_not_page_production(rendered, staging, tmp_path):
    # Both releases' pods are scraped as job="agora": a load test on staging's
    # gateway must not reach production's p99, and pages as staging's own.
    traffic = _gateway_latency(STAGING, slow=True) + _gateway_latency(NAMESPACE, slow=False)
    _promtool_test(tmp_path, rendered["production"], [_latency_case(traffic, None)], group="")
    _promtool_test(tmp_path, staging, [_latency_case(traffic, STAGING)], group="")


def _in_namespace(series: str, namespace: str) -> str:
    name, brace, rest = series.partition("{")
    return f'{name}{{namespace="{namespace}"' + (f",{rest}" if brace else "}")


def _file_tests_moved_to(namespace: str, expect_alerts: bool) -> list[dict[str, Any]]:
    """The rule files' own promtool tests with every input series in `namespace`;
    their alerts expected with that namespace, or none at all."""
    moved = []
    for case in yaml.safe_load(FILE_TESTS.read_text())["tests"]:
        if any(re.search(r"[{,]namespace=", s["series"]) for s in case["input_series"]):
            continue  # already about namespaces
        series = [
            {**s, "series": _in_namespace(s["series"], namespace)} for s in case["input_series"]
        ]
        checks = [
            {
                **check,
                "exp_alerts": [
                    {**alert, "exp_labels": {**alert["exp_labels"], "namespace": namespace}}
                    for alert in check["exp_alerts"]
                ]
                if expect_alerts
                else [],
            }
            for check in case.get("alert_rule_test", [])
        ]
        moved.append({**case, "input_series": series, "alert_rule_test": checks})
    return moved


def test_every_file_alert_fires_for_its_own_release_only(rendered, staging, tmp_path):
    # Each alert of deploy/prometheus/rules/, on staging's series: it fires as its
    # tests say in staging's PrometheusRule, and never in production's.
    (tmp_path / "own").mkdir()
    (tmp_path / "other").mkdir()
    _promtool_test(tmp_path / "own", staging, _file_tests_moved_to(STAGING, True), group="")
    _promtool_test(
        tmp_path / "other", rendered["production"], _file_tests_moved_to(STAGING, False), group=""
    )
