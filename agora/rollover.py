"""Restart the process, as SIGTERM does, after a certificate it cannot reload is renewed.

The Temporal SDK's client takes its TLS key pair once, at connect (temporalio 1.35
can swap its API key and metadata, not its certificate), and reconnects with that
pair for as long as the process lives: the frontend closes every connection after
a few minutes (keepAliveMaxConnectionAge), so once the old certificate expires each
reconnect fails and the workers stop. cert-manager renews the files in place (a new
key too); the platform's own gRPC contexts load them (`pki.watch_certificates`),
this client can only be built again, by a restart. Each process waits a random part
of the rollover window first, so the pods of a release do not all restart at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509

from agora import process
from agora.pki import RELOAD_CHECK_S

log = logging.getLogger(__name__)


class CertificateRollover:
    """Watches files against the contents a client was built with; once one differs,
    calls `shutdown` after a random delay within `window_s`, unless `stopping` (the
    process's shutdown) is set by then. `run` returns when it has called `shutdown`
    or when `stopping` is set; a file only touched, its contents the same, is no change.
    """

    def __init__(
        self,
        loaded: Mapping[Path, bytes],
        *,
        window_s: float,
        shutdown: Callable[[], None],
        stopping: asyncio.Event,
        check_s: float = RELOAD_CHECK_S,
        rng: random.Random | None = None,
    ) -> None:
        self._loaded = dict(loaded)
        self._window_s = window_s
        self._shutdown = shutdown
        self._stopping = stopping
        self._check_s = check_s
        self._rng = rng or random.Random()
        self.checks = 0  # how many times the files were compared (tests wait on it)

    async def run(self) -> None:
        changed = await self._first_change()
        if not changed:
            return
        delay_s = self._rng.uniform(0.0, self._window_s)
        for path in changed:
            log.warning(
                "certificate renewed on disk; restarting to present it",
                extra={"file": str(path), **_not_after(path), "restart_in_s": round(delay_s, 1)},
            )
        if not await process.set_within(self._stopping, delay_s):
            self._shutdown()

    def changed_files(self) -> list[Path]:
        """The files whose contents differ from those loaded. One that cannot be read
        (a renewal half-way) is no change yet: a restart now could not connect."""
        changed = []
        for path, loaded in self._loaded.items():
            try:
                if path.read_bytes() != loaded:
                    changed.append(path)
            except OSError as error:
                log.warning(
                    "certificate check failed", extra={"file": str(path), "error": str(error)}
                )
        return changed

    async def _first_change(self) -> list[Path]:
        """The first files found changed; empty when `stopping` is set first."""
        while not await process.set_within(self._stopping, self._check_s):
            self.checks += 1
            changed = self.changed_files()
            if changed:
                return changed
        return []


def _not_after(path: Path) -> dict[str, str]:
    """The new certificate's notAfter for the log; nothing for a key (or unreadable file)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return {"not_after": cert.not_valid_after_utc.isoformat()}
