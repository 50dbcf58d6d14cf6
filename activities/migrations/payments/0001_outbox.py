"""The transactional outbox (agora.outbox)."""

from yoyo import step

from agora.outbox import OUTBOX_DDL

steps = [step(OUTBOX_DDL)]
