"""The outbox prune's index on sent_at (agora.outbox.OUTBOX_SENT_INDEX_STEPS)."""

from yoyo import step

from agora.outbox import OUTBOX_SENT_INDEX_STEPS

__depends__ = {"0002_intents_and_ledger"}
__transactional__ = False

steps = [step(statement) for statement in OUTBOX_SENT_INDEX_STEPS]
