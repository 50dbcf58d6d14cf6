"""The image: one multi-stage Dockerfile for every process, non-root, pinned base,
read-only-root friendly, no secrets in the build context. (No Docker daemon here:
its structure is checked.)"""

from __future__ import annotations

import re
import tomllib

from tests.deploy.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
DOCKERIGNORE = (REPO / ".dockerignore").read_text()


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def arg_default(name: str) -> str:
    for word, rest in instructions():
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    return ""


def test_multi_stage_with_pinned_slim_base():
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    base = arg_default("PYTHON_IMAGE")
    for f in froms:
        image = f.split()[0].replace("${PYTHON_IMAGE}", base)
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", f"base {image} not pinned by tag"
        assert "slim" in tag or "@sha256:" in image, f"base {image} is not a slim image"
        assert re.match(r"\d+\.\d+\.\d+-", tag), f"{image}: pin the full Python version"


def test_runs_as_non_root_user():
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users, "no USER instruction"
    final = users[-1].split(":")[0].replace("${AGORA_UID}", arg_default("AGORA_UID"))
    assert final not in ("root", "0", ""), final
    assert final.isdigit(), "numeric USER, so runAsNonRoot can verify it"
    # USER comes after the last step that needs root.
    words = [w for w, _ in instructions()]
    last_run = max(i for i, w in enumerate(words) if w == "RUN")
    last_user = max(i for i, w in enumerate(words) if w == "USER")
    assert last_user > last_run


def test_one_image_for_every_process():
    cmd = [rest for word, rest in instructions() if word in ("CMD", "ENTRYPOINT")]
    assert cmd and '"python", "-m", "gateway"' in cmd[-1]
    for package in ("agora", "workers", "workflows", "activities", "gateway", "contracts"):
        assert re.search(rf"^COPY .*\b{package} \./{package}$", DOCKERFILE, re.M), package


def test_read_only_root_friendly():
    env = " ".join(rest for word, rest in instructions() if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "AGORA_STATE_DIR=/tmp/" in env, "state goes to the writable /tmp"
    assert "HOME=/tmp" in env
    assert "compileall" in DOCKERFILE, "bytecode compiled at build time"


def test_no_secrets_in_image_or_context():
    assert not re.search(
        r"(?i)^\s*(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|KEK|API_KEY)\S*=", DOCKERFILE, re.M
    )
    for pattern in ("**/*.key", "**/*.pem", "**/.env", "**/.state", "**/secrets"):
        assert pattern in DOCKERIGNORE.splitlines(), pattern
    lines = [x.strip() for x in DOCKERIGNORE.splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0] == "**", "the context is an allow-list"
    for never in ("!.state", "!.venv", "!.git", "!tests", "!reports"):
        assert never not in lines


def _pinned() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}


def test_the_image_installs_the_versions_the_tests_ran_against():
    # Open ranges resolved at build time made an image that could differ from what
    # the tests ran against, and two builds of one commit differ.
    pinned = _pinned()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for requirement in wanted:
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pinned, f"{name} is not pinned"
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "-c constraints.txt" in runs
    assert "-c constraints.txt" in (REPO / "Makefile").read_text(), "make venv uses them too"
    assert "!constraints.txt" in DOCKERIGNORE.splitlines()


def test_the_dependencies_layer_comes_before_the_code():
    # Copied before the install, any change to the code installed every dependency again.
    steps = instructions()
    install = next(
        i for i, (word, rest) in enumerate(steps) if word == "RUN" and "pip install" in rest
    )
    copied_before = " ".join(rest for word, rest in steps[:install] if word == "COPY")
    assert "constraints.txt" in copied_before
    for package in ("agora", "workers", "workflows", "activities", "gateway", "contracts"):
        assert f"./{package}" not in copied_before, package
