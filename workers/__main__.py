"""`python -m workers <service>`: run one Agora service process.

The process is a Temporal worker on the service's task queue, its grpclib read
API (mTLS), its Kafka consumers, its outbox relay and a side HTTP port with
/healthz, /readyz and /metrics. Run more processes of a service to scale it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import uvloop

from agora import config
from agora.leave import run_and_leave
from agora.logs import setup_logging
from agora.service import ServiceDefinition, run_service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("service", choices=config.SERVICES)
    args = parser.parse_args(argv)
    try:
        module = importlib.import_module(f"workers.{args.service}")
    except ModuleNotFoundError:
        print(f"service {args.service!r} is not implemented yet", file=sys.stderr)
        return 2
    definition: ServiceDefinition = module.DEFINITION
    # Before the settings are read, so a setting refused is one JSON line, like the
    # rest; `run_service` sets logging up again at the configured level.
    setup_logging(args.service)
    settings = config.load(service=args.service)
    uvloop.run(run_service(definition, settings))
    return 0


if __name__ == "__main__":
    run_and_leave(main)
