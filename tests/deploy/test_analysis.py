"""The release gate, evaluated: the analysis queries run by promtool over series of
new pods that served few or many calls, and the conditions Argo Rollouts applies to
what they return (tests/deploy/policy.py `verdict`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import policy
from tests.deploy.conftest import NAMESPACE, Manifest
from tests.deploy.test_alerts import _promtool

HASH = "5d8f7c9b6"
# Each workload's own template, with the series its queries read.
TEMPLATES = {
    "orders-slo": ("rpc_server_duration_seconds", 'rpc_code="OK"', 'rpc_code="INTERNAL"'),
    "gateway-slo": ("gateway_request_duration_seconds", 'status="200"', 'status="503"'),
}


def _metric(docs: list[Manifest], template: str, name: str) -> dict[str, Any]:
    at = policy.one(docs, "AnalysisTemplate", template)
    assert at is not None, template
    (metric,) = [m for m in at["spec"]["metrics"] if m["name"] == name]
    return metric


def _series(template: str, calls_per_minute: int, errors_per_minute: int) -> list[dict[str, str]]:
    """A new pod's counters over 20 minutes: every call fast (under 50 ms)."""
    base, ok, failed = TEMPLATES[template]
    count = "gateway_requests_total" if template == "gateway-slo" else f"{base}_count"
    own = f'namespace="{NAMESPACE}", rollouts_pod_template_hash="{HASH}"'
    good = calls_per_minute - errors_per_minute
    series = [
        (f"{count}{{{own}, {ok}}}", good),
        # An error series exists only once an error happened (created on first use).
        *([(f"{count}{{{own}, {failed}}}", errors_per_minute)] if errors_per_minute else []),
        (f'{base}_bucket{{{own}, le="0.05"}}', calls_per_minute),
        (f'{base}_bucket{{{own}, le="+Inf"}}', calls_per_minute),
    ]
    return [{"series": s, "values": f"0+{per_minute}x20"} for s, per_minute in series]


def _returns_a_value(tmp_path: Path, query: str, series: list[dict[str, str]]) -> bool:
    """Whether the query, at minute 10, returns a sample (promtool states it)."""
    query = query.replace("{{args.pod-hash}}", HASH)
    outcomes = []
    for expected in ([], [{"labels": "{}", "value": 1}]):
        test = {
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": series,
                    "promql_expr_test": [
                        {"expr": f"count({query})", "eval_time": "10m", "exp_samples": expected}
                    ],
                }
            ],
        }
        (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
        result = subprocess.run(
            [_promtool(), "test", "rules", "test.yml"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )
        assert "could not" not in result.stdout + result.stderr, result.stdout + result.stderr
        outcomes.append(result.returncode == 0)
    assert outcomes.count(True) == 1, "the query neither returned nor did not return"
    return outcomes[1]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("metric", ["p99-latency", "error-ratio"])
def test_new_pods_that_served_too_few_calls_are_not_judged_a_success(
    rendered, tmp_path: Path, template: str, metric: str
):
    # 5 calls a minute: 10 in the 2-minute window, under minRequests (20).
    m = _metric(rendered["production"], template, metric)
    answered = _returns_a_value(
        tmp_path, m["provider"]["prometheus"]["query"], _series(template, 5, 0)
    )
    assert not answered
    assert policy.verdict(m, []) == "Inconclusive"


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_pods_under_traffic_are_judged_on_their_errors(rendered, tmp_path: Path, template: str):
    m = _metric(rendered["production"], template, "error-ratio")
    query = m["provider"]["prometheus"]["query"]
    assert _returns_a_value(tmp_path, query, _series(template, 60, 0))
    # What the queries then return: no errors (passes), one call in ten failing.
    assert policy.verdict(m, [0.0]) == "Successful"
    assert policy.verdict(m, [0.1]) == "Failed"


def test_the_preview_analysis_passes_on_silence_as_documented(rendered):
    # Nothing routes to gateway-preview by itself (docs/deploy.md, Known gaps): its
    # run judges the traffic someone sends there and does not block the switch.
    m = _metric(rendered["production"], "gateway-preview-slo", "error-ratio")
    assert policy.verdict(m, []) == "Successful"
    assert policy.verdict(m, [0.5]) == "Failed"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_canary_is_analysed_until_the_rollout_completes(rendered, env):
    # With a count, the background run ended ~4 minutes in: the 50 % step and the
    # promotion ran unanalysed.
    for name in policy.SERVICES:
        rollout = policy.one(rendered[env], "Rollout", name)
        assert rollout is not None
        (template,) = rollout["spec"]["strategy"]["canary"]["analysis"]["templates"]
        assert policy.analysis_seconds(rendered[env], template["templateName"]) is None, name


@pytest.mark.parametrize("env", ["staging", "production"])
def test_blue_keeps_running_until_the_post_promotion_analysis_ends(rendered, env):
    rollout = policy.one(rendered[env], "Rollout", "gateway")
    assert rollout is not None
    bg = rollout["spec"]["strategy"]["blueGreen"]
    (template,) = bg["postPromotionAnalysis"]["templates"]
    runs = policy.analysis_seconds(rendered[env], template["templateName"])
    assert runs is not None and bg["scaleDownDelaySeconds"] >= runs
