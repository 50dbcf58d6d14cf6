"""`stack up` asks every component for the tools it needs before installing any."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import stack.__main__ as stack_main
from stack.base import ComponentError
from stack.otelcol import Jaeger, _go_version


@pytest.mark.parametrize(
    ("text", "version"),
    [("go1.24.3", (1, 24)), ("go1.19.8", (1, 19)), ("go1.25rc1", (1, 25)), ("", (0, 0))],
)
def test_go_versions_are_read(text: str, version: tuple[int, int]) -> None:
    assert _go_version(text) == version


def fake_go(tmp_path: Path, version: str) -> str:
    """A PATH whose `go` answers `go env GOVERSION` with `version`."""
    go = tmp_path / "go"
    go.write_text(f"#!/bin/sh\necho {version}\n")
    go.chmod(0o755)
    return f"{tmp_path}:{os.environ['PATH']}"


def test_a_go_too_old_to_build_the_tools_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Debian 12's `golang` is Go 1.19; the builds need `go get -tool` (1.24).
    monkeypatch.setenv("PATH", fake_go(tmp_path, "go1.19.8"))
    with pytest.raises(ComponentError, match=r"found go1\.19\.8, need go1\.24 or newer"):
        Jaeger().preflight(None)  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", fake_go(tmp_path, "go1.24.0"))
    Jaeger().preflight(None)  # type: ignore[arg-type]


def test_no_go_at_all_says_where_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ComponentError, match="`go` not found"):
        Jaeger().preflight(None)  # type: ignore[arg-type]


class NotYetFetched:
    """A component that counts as not installed until set-up fetches it (Elasticsearch:
    its zip), whose Debian packages are all present."""

    debian_packages = ("coreutils", "dpkg")

    def installed(self, ctx: object) -> bool:
        return False


def test_a_normal_user_with_every_package_present_is_not_sent_to_apt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stack_main.os, "geteuid", lambda: 1000)
    stack_main.install_debian_packages([NotYetFetched()], None)  # type: ignore[list-item, arg-type]
    assert stack_main.missing_packages({"coreutils", "agora-no-such-package"}) == [
        "agora-no-such-package"
    ]
