"""What every Agora process does first: JSON logs, telemetry, certificates, signal handling."""

from __future__ import annotations

import asyncio
import signal

from agora.config import SERVICES, Settings
from agora.logs import setup_logging
from agora.pki import ensure_pki
from agora.telemetry import Telemetry, setup_telemetry


def bootstrap(settings: Settings, name: str) -> tuple[Telemetry, asyncio.Event]:
    """Set up the process for `name`; the returned event is set on SIGTERM or SIGINT.

    Must be called from inside the running event loop.
    """
    setup_logging(name, settings.log_level)
    telemetry = setup_telemetry(settings, name)
    if settings.profile != "prod":
        # Locally the platform CA is ours; in a cluster cert-manager issues the certificates.
        ensure_pki(settings.pki_dir, (*SERVICES, "gateway"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return telemetry, stop
