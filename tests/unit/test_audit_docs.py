"""docs/audit.md says what the audit service does: its migrations, its intake's batching
and what each of its counters counts."""

from __future__ import annotations

import re
from pathlib import Path

from agora.db import migrations_dir
from workers.audit.chain import ChainWriter
from workers.audit.consumer import AuditConsumer

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_the_docs_list_audits_migrations_and_no_other() -> None:
    [row] = [
        line for line in DOC.read_text().splitlines() if "activities/migrations/audit/" in line
    ]
    documented = set(re.findall(r"`(\d{4})(?:_\w+)?`", row))
    actual = {path.name[:4] for path in migrations_dir("audit").glob("[0-9][0-9][0-9][0-9]_*")}
    assert documented == actual
    assert "outbox (" not in row, "audit publishes no events: it has no outbox migration"


def test_the_docs_describe_the_consumer_appending_a_whole_round_per_transaction() -> None:
    spec = AuditConsumer(ChainWriter(None)).spec()  # type: ignore[arg-type]
    text = " ".join(DOC.read_text().split())
    assert spec.batch_handler is not None and spec.whole_round
    assert "whole fetch round" in text
    assert "per-record" not in text


def test_the_docs_count_undecodable_records_where_the_code_counts_them() -> None:
    # The shared consumer dead-letters a record that is no envelope before audit's
    # handler (the only place agora_audit_rejected is counted) ever sees it.
    sentences = " ".join(DOC.read_text().split()).split(". ")
    claims = [s for s in sentences if "agora_audit_rejected" in s]
    assert claims
    for sentence in claims:
        assert not re.search(r"not envelopes at all.*counted \(`agora_audit_rejected", sentence)
    assert any("agora_kafka_dead_lettered_total` only" in s for s in sentences)
