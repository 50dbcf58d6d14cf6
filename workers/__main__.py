"""`python -m workers <service>`: run one Agora service process.

The process is a Temporal worker on the service's task queue, its grpclib read
API (mTLS), its Kafka consumers, its outbox relay and a side HTTP port with
/healthz, /readyz and /metrics. Run more processes of a service to scale it.
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

from agora import config
from agora.leave import run_and_leave
from agora.logs import setup_logging

if TYPE_CHECKING:
    from agora.service import ServiceDefinition


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("service", choices=config.SERVICES)
    args = parser.parse_args(argv)
    # Before the runtime and the service's modules are imported and the settings read,
    # so a dependency missing from an image, or a setting refused, is one JSON line
    # with the service (run_and_leave logs it "crashed"), not a bare traceback;
    # `run_service` sets logging up again at the configured level.
    setup_logging(args.service)
    import uvloop

    from agora.service import run_service

    definition: ServiceDefinition = importlib.import_module(f"workers.{args.service}").DEFINITION
    settings = config.load(service=args.service)
    uvloop.run(run_service(definition, settings))
    return 0


if __name__ == "__main__":
    run_and_leave(main)
