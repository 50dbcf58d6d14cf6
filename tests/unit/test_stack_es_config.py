"""Elasticsearch's config files follow the version the stack runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from agora import config
from stack import base
from stack.base import Context
from stack.elasticsearch import Elasticsearch, distribution_config


def _distribution(root: Path, jvm_options: str) -> Path:
    source = root / "config"
    source.mkdir(parents=True)
    (source / "jvm.options").write_text(jvm_options)
    return source


def test_a_new_version_brings_its_own_config_files(tmp_path: Path) -> None:
    config = tmp_path / "data" / "config"
    distribution_config(_distribution(tmp_path / "9.5.4", "-Xss1m old"), config, "9.5.4")
    (config / "elasticsearch.yml").write_text("rendered by the stack")
    distribution_config(_distribution(tmp_path / "9.6.0", "-Xss1m new"), config, "9.6.0")
    assert (config / "jvm.options").read_text() == "-Xss1m new"
    assert (config / "elasticsearch.yml").read_text() == "rendered by the stack"


def test_a_copy_cut_short_is_made_again(tmp_path: Path) -> None:
    config = tmp_path / "data" / "config"
    config.mkdir(parents=True)
    (config / "jvm.options").write_text("")  # half written, no stamp
    distribution_config(_distribution(tmp_path / "9.5.4", "-Xss1m"), config, "9.5.4")
    assert (config / "jvm.options").read_text() == "-Xss1m"


@pytest.mark.parametrize(("euid", "setfacl", "installed"), [(1000, None, True), (0, None, False)])
def test_acl_is_needed_only_as_root(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    euid: int,
    setfacl: str | None,
    installed: bool,
) -> None:
    # setfacl lets the elasticsearch user (root only) reach the state folder: without
    # root a cached Elasticsearch asked for acl and unzip, a failure without sudo.
    ctx = Context(config.load({"AGORA_CACHE_DIR": str(tmp_path)}))
    es = Elasticsearch()
    es.home(ctx).mkdir(parents=True)
    (es.home(ctx) / ".agora-complete").touch()
    monkeypatch.setattr(base.os, "geteuid", lambda: euid)
    monkeypatch.setattr(base.shutil, "which", lambda _: setfacl)
    assert es.installed(ctx) is installed
