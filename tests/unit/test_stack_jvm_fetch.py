"""How `stack up` fetches Kafka and Elasticsearch: its own versions, checksums enforced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agora import config
from stack import elasticsearch, kafka
from stack.base import ComponentError, Context

# Records its arguments and fails, as an unreachable Maven Central would: nothing is fetched.
FAKE_MVN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$(dirname "$0")/../mvn-args"
exit 1
"""


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text(FAKE_MVN)
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("MVN", raising=False)
    # Left exported in the shell, e.g. from trying another version by hand.
    monkeypatch.setenv("KAFKA_VERSION", "3.0.0")
    monkeypatch.setenv("ES_VERSION", "8.0.0")
    return Context(
        config.load(
            {"AGORA_STATE_DIR": str(tmp_path / "state"), "AGORA_CACHE_DIR": str(tmp_path / "cache")}
        )
    )


def _mvn_args(ctx: Context) -> list[str]:
    return (ctx.cache.parent / "mvn-args").read_text().splitlines()


def test_kafka_is_fetched_at_the_stack_version_with_strict_checksums(ctx: Context) -> None:
    with pytest.raises(ComponentError):
        kafka.Kafka().install(ctx)
    args = _mvn_args(ctx)
    assert "--strict-checksums" in args
    assert f"-Dkafka.version={kafka.VERSION}" in args


def test_elasticsearch_is_fetched_at_the_stack_version_with_strict_checksums(
    ctx: Context,
) -> None:
    with pytest.raises(ComponentError):
        elasticsearch.Elasticsearch().install(ctx)
    args = _mvn_args(ctx)
    assert "--strict-checksums" in args
    zip_artifact = "org.elasticsearch.distribution.integ-test-zip:elasticsearch"
    assert f"-Dartifact={zip_artifact}:{elasticsearch.VERSION}:zip" in args
