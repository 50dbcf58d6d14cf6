"""How `stack up` fetches Kafka and Elasticsearch: its own versions, checksums enforced
(Maven Central's for Kafka's jars, the repo's pinned SHA-512 for the Elasticsearch zip)."""

from __future__ import annotations

import os
import subprocess
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


# "Downloads" a zip that is not the pinned one (a tampered or truncated artifact).
WRONG_ZIP_MVN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$(dirname "$0")/../mvn-args"
for arg in "$@"; do
    case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
printf 'not the release' > "$out/elasticsearch-$ES_VERSION.zip"
"""


def _mvn_args(ctx: Context) -> list[str]:
    return (ctx.cache.parent / "mvn-args").read_text().splitlines()


def test_kafka_is_fetched_at_the_stack_version_with_strict_checksums(ctx: Context) -> None:
    with pytest.raises(ComponentError):
        kafka.Kafka().install(ctx)
    args = _mvn_args(ctx)
    assert "--strict-checksums" in args
    assert f"-Dkafka.version={kafka.VERSION}" in args


def test_elasticsearch_is_fetched_at_the_stack_version_and_its_pinned_digest(
    ctx: Context,
) -> None:
    with pytest.raises(ComponentError):
        elasticsearch.Elasticsearch().install(ctx)
    args = _mvn_args(ctx)
    # Central serves the zip without a checksum file: strict mode would refuse it.
    assert "--lax-checksums" in args
    zip_artifact = "org.elasticsearch.distribution.integ-test-zip:elasticsearch"
    assert f"-Dartifact={zip_artifact}:{elasticsearch.VERSION}:zip" in args


def test_an_elasticsearch_zip_that_is_not_the_pinned_one_is_never_unpacked(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    mvn = ctx.cache.parent / "bin" / "mvn"
    mvn.write_text(WRONG_ZIP_MVN)
    # Maven's local copy, in a home of the test's own (the script removes a bad one).
    home = ctx.cache.parent / "home"
    local_copy = home / ".m2/repository/org/elasticsearch/distribution/integ-test-zip"
    fetched = local_copy / "elasticsearch" / elasticsearch.VERSION
    fetched.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ComponentError):
        elasticsearch.Elasticsearch().install(ctx)
    assert _mvn_args(ctx)  # it was fetched, then refused
    assert not (ctx.cache / "elasticsearch" / elasticsearch.VERSION).exists()
    assert not fetched.exists()  # the next run fetches it afresh
    log = (ctx.cache / "elasticsearch" / f"fetch-{elasticsearch.VERSION}.log").read_text()
    assert f"(expected {elasticsearch.ZIP_SHA512})" in log


def test_the_fetch_script_refuses_to_fetch_elasticsearch_without_a_pinned_digest(
    ctx: Context,
) -> None:
    env = {**os.environ, "FETCH_ONLY": "elasticsearch", "ES_VERSION": elasticsearch.VERSION}
    env.pop("ES_SHA512", None)
    done = subprocess.run(
        ["bash", str(elasticsearch.FETCH), str(ctx.cache)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "ES_SHA512 must be the zip's pinned SHA-512" in done.stderr
    assert not (ctx.cache.parent / "mvn-args").exists()  # nothing fetched
