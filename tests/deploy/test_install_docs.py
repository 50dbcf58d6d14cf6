"""docs/deploy.md's install commands, run against stand-ins of kubectl, helm and
openssl that record what they are asked: the Secrets they would create are the ones
the engine examples and the charts read, with matching values."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import REPO

DOCS = REPO / "docs" / "deploy.md"
ENGINES = REPO / "deploy" / "k8s" / "engines"

RECORDING = """#!/bin/bash
{ printf '%q ' "$(basename "$0")" "$@"; echo; } >> "$CALLS"
"""
# Each `openssl rand` answers a different value, as the real one would.
OPENSSL = """#!/bin/bash
n=$(( $(cat "$CALLS.n" 2>/dev/null || echo 0) + 1 )); echo $n > "$CALLS.n"; echo "secret-$n"
"""


def _sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOCS.read_text(), flags=re.S)


def _run_recorded(script: str, tmp_path: Path) -> list[list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in {"kubectl": RECORDING, "helm": RECORDING, "openssl": OPENSSL}.items():
        (bin_dir / tool).write_text(body)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls"
    subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)},
        check=True,
        capture_output=True,
    )
    return [shlex.split(line) for line in calls.read_text().splitlines()]


def _secrets_created(calls: list[list[str]]) -> dict[tuple[str, str], dict[str, str]]:
    """{(namespace, name): {key: literal}} of every `kubectl create secret generic`."""
    made = {}
    for call in calls:
        if call[:1] != ["kubectl"] or "create" not in call or "secret" not in call:
            continue
        namespace = call[call.index("-n") + 1]
        name = call[call.index("generic") + 1]
        literals = [a.split("=", 1)[1] for a in call if a.startswith("--from-literal=")]
        made[(namespace, name)] = dict(lit.split("=", 1) for lit in literals)
    return made


# Each CloudNativePG example and the namespace of the Agora release logging in to it.
POSTGRES_CLUSTERS = {"cloudnative-pg.yaml": "agora", "cloudnative-pg-staging.yaml": "agora-staging"}


def _managed_role_secrets(file: str) -> list[str]:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all((ENGINES / file).read_text()) if d]
    (cluster,) = [d for d in docs if d["kind"] == "Cluster"]
    roles = cluster["spec"]["managed"]["roles"]
    return [r["passwordSecret"]["name"] for r in roles if r.get("passwordSecret")]


def test_every_database_password_is_made_once_for_the_database_and_its_client(tmp_path):
    # CloudNativePG sets each managed role's password from its Secret in namespace
    # postgres; the client logs in with the Secret of the same name in its own
    # namespace. Two random passwords (one per namespace) lock the client out.
    calls = _run_recorded(_sh_blocks()[0], tmp_path)
    every_secret = []
    for file, agora in POSTGRES_CLUSTERS.items():
        applied = calls.index(["kubectl", "apply", "-f", f"deploy/k8s/engines/{file}"])
        made = _secrets_created(calls[:applied])
        client_namespace = {"temporal-db": "temporal"}
        for secret in _managed_role_secrets(file):
            in_postgres = made.get(("postgres", secret))
            assert in_postgres, f"{secret} is not created in namespace postgres before {file}"
            client = made.get((client_namespace.get(secret, agora), secret))
            assert client == in_postgres, f"{secret}: the client's Secret differs from the role's"
        every_secret += _managed_role_secrets(file)
    # Staging's roles neither share production's Secrets nor their passwords.
    assert len(set(every_secret)) == len(every_secret), "clusters share a Secret"
    made = _secrets_created(calls)
    passwords = [made[("postgres", s)]["password"] for s in every_secret]
    assert len(set(passwords)) == len(passwords), "roles share a password"


def _pipeline_writing(target: str) -> str:
    """The last command of the pipeline that writes `> target` in the docs."""
    text = DOCS.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if f"> {target}" in line]
    return line.split(f"> {target}")[0].rsplit("|", 1)[1].strip()


def test_the_elasticsearch_api_key_file_holds_the_key_and_no_newline(tmp_path):
    # The file becomes the Secret's value and then an HTTP header, which aiohttp
    # refuses with a control character in it: the search pods crash at start.
    command = _pipeline_writing("es-api-key")
    answer = '{"id": "x", "name": "agora-search", "encoded": "eDpzZWNyZXQ="}\n'
    if shutil.which("jq"):
        written = subprocess.run(
            ["bash", "-c", command], input=answer.encode(), capture_output=True, check=True
        ).stdout
        assert written == b"eDpzZWNyZXQ="
    else:
        words = shlex.split(command)
        assert words[0] == "jq" and ({"-j", "--join-output"} & set(words)), command


# Namespaces made by the operators' own installation, not by these commands.
OPERATOR_NAMESPACES = {"cert-manager", "kafka", "elastic"}


def _namespaces_used(call: list[str]) -> set[str]:
    """The namespaces a kubectl or helm call puts something in: its -n, or the
    metadata.namespace of each object of a file it applies."""
    if "-n" in call:
        return {call[call.index("-n") + 1]}
    if call[:3] == ["kubectl", "apply", "-f"]:
        docs = yaml.safe_load_all((REPO / call[3]).read_text())
        return {d["metadata"]["namespace"] for d in docs if d and "namespace" in d["metadata"]}
    return set()


def test_every_namespace_exists_before_something_is_put_in_it(tmp_path):
    # `kubectl -n X create secret` and `kubectl apply` of an object in X fail when X
    # does not exist; helm would make its own only with --create-namespace.
    created: set[str] = set()
    for call in _run_recorded(_sh_blocks()[0], tmp_path):
        if call[:3] == ["kubectl", "create", "namespace"]:
            created.add(call[3])
            continue
        missing = _namespaces_used(call) - created - OPERATOR_NAMESPACES
        assert not missing, f"{shlex.join(call)}: namespace {missing} not created before"
