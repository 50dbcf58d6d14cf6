"""A relay process for the outbox crash test: publishes schema outbox_test of identity's DB."""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from agora import config, kafka
from agora.outbox import OutboxRelay


async def main(schema: str, batch_size: int) -> None:
    settings = config.load()
    pool = await asyncpg.create_pool(
        settings.db_dsn("identity"),
        min_size=2,
        max_size=4,
        server_settings={"search_path": schema},
    )
    relay = OutboxRelay(
        pool,
        lambda: kafka.create_producer(settings, client_id="outbox-test"),
        f"outbox-test-{schema}",
        batch_size=batch_size,
        poll_interval=0.2,
    )
    await relay.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
