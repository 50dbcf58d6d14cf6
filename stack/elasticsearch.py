"""Elasticsearch (the integ-test-zip distribution from Maven Central) on the Temurin JDK."""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

from agora.config import REPO_ROOT
from stack.base import (
    ComponentError,
    Context,
    can_grant_traverse,
    chown_tree,
    ensure_system_user,
    grant_traverse,
    run_step,
    which,
)
from stack.component import Component, http_body, render_template

VERSION = "9.5.4"
# The integ-test zip's SHA-512, checked before it is unpacked: the registry serves this
# artifact without a checksum file, so Maven cannot check it (see the fetch script).
# Taken from the zip Maven Central served on 2026-11-27 (trust on first use; `unzip -t`
# passed); change it with VERSION.
ZIP_SHA512 = (
    "a75df614854ace52dd0bce977662b3792873ac077ec0af9026cd0b2a0eb119e4"
    "49910f8eb8ed577d1a83c51c6ee6af71bf5004c3cf5b418c979186de8b5dd9e6"
)
ES_USER = "agora-es"  # Elasticsearch refuses to run as root
DEPLOY = REPO_ROOT / "deploy" / "elasticsearch"
FETCH = REPO_ROOT / "deploy" / "local" / "fetch_jvm_components.sh"


def java_home() -> str:
    """Elasticsearch 9 needs Java 21+: the Temurin JDK under /usr/lib/jvm."""
    explicit = os.environ.get("AGORA_ES_JAVA_HOME")
    if explicit:
        return explicit
    for candidate in sorted(glob.glob("/usr/lib/jvm/temurin-*-jdk-*"), reverse=True):
        major = int(Path(candidate).name.split("-")[1])
        if major >= 21:
            return candidate
    raise ComponentError(
        "elasticsearch",
        f"Elasticsearch {VERSION} needs Java 21 or newer; none found under /usr/lib/jvm",
        hint="install a JDK 21+ (e.g. apt-get install openjdk-21-jdk-headless where available) "
        "and point AGORA_ES_JAVA_HOME at it",
    )


def distribution_config(source: Path, config: Path, version: str) -> None:
    """The distribution's config files (jvm.options, log4j2.properties, ...) in the
    data folder's config, copied again when the version changed or a copy was cut
    short: the stamp is written last. Before, they were copied once, so a version
    bump kept the old version's files and an interrupted copy stayed half done."""
    stamp = config / ".agora-version"
    if stamp.exists() and stamp.read_text() == version:
        return
    shutil.copytree(source, config, dirs_exist_ok=True)
    stamp.write_text(version)


class Elasticsearch(Component):
    name = "elasticsearch"
    ports = ("elasticsearch", "elasticsearch_transport")
    # setfacl (the data folder's ACL) and unzip (the distribution is a zip).
    debian_packages = ("acl", "unzip")
    start_timeout = 120

    def home(self, ctx: Context) -> Path:
        return ctx.cache / "elasticsearch" / VERSION

    def preflight(self, ctx: Context) -> None:
        if not (self.home(ctx) / ".agora-complete").exists():
            which(self.name, "mvn", hint="apt-get install maven")
        java_home()

    def installed(self, ctx: Context) -> bool:
        return (self.home(ctx) / ".agora-complete").exists() and can_grant_traverse()

    def install(self, ctx: Context) -> None:
        which(self.name, "mvn", hint="apt-get install maven")
        # The version this module runs, whatever ES_VERSION the shell exports.
        env = {
            **os.environ,
            "FETCH_ONLY": "elasticsearch",
            "ES_VERSION": VERSION,
            "ES_SHA512": ZIP_SHA512,
        }
        run_step(self.name, ["bash", FETCH, ctx.cache], ctx=ctx, env=env, tee=True)

    def prepare(self, ctx: Context) -> None:
        root = ctx.data("elasticsearch")
        config = root / "config"
        distribution_config(self.home(ctx) / "config", config, VERSION)
        for sub in ("data", "logs", "tmp"):
            (root / sub).mkdir(exist_ok=True)
        render_template(
            DEPLOY / "elasticsearch.yml.tmpl",
            config / "elasticsearch.yml",
            {
                "ES_HTTP_PORT": ctx.port("elasticsearch"),
                "ES_TRANSPORT_PORT": ctx.port("elasticsearch_transport"),
                "ES_DATA_DIR": root / "data",
                "ES_LOGS_DIR": root / "logs",
            },
        )
        user = ensure_system_user(ES_USER)
        chown_tree(root, user)
        grant_traverse(self.home(ctx), user)
        grant_traverse(root, user)

    def start(self, ctx: Context) -> None:
        root = ctx.data("elasticsearch")
        ctx.spawn(
            self.name,
            [self.home(ctx) / "bin" / "elasticsearch"],
            env={
                "ES_JAVA_HOME": java_home(),
                "ES_PATH_CONF": str(root / "config"),
                "ES_TMPDIR": str(root / "tmp"),
                "ES_JAVA_OPTS": os.environ.get("AGORA_ES_HEAP_OPTS", "-Xms1g -Xmx1g"),
                "HOME": str(root),
            },
            user=ensure_system_user(ES_USER),
        )

    def healthy(self, ctx: Context) -> bool:
        url = f"{ctx.settings.elasticsearch_url}/_cluster/health?wait_for_status=yellow&timeout=1s"
        return json.loads(http_body(url))["status"] in ("green", "yellow")

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"elasticsearch": ctx.settings.elasticsearch_url}
