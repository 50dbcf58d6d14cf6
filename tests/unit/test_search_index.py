"""The settings search's product indices are created with."""

from __future__ import annotations

from workers.search.index import index_settings


def test_a_product_index_keeps_a_replica_wherever_a_second_node_can_hold_it() -> None:
    # Three production nodes: one replica, so losing a node leaves every shard
    # searchable and writable. One local node: none (it could never place one).
    settings = index_settings("100ms")
    assert settings["auto_expand_replicas"] == "0-1"
    assert "number_of_replicas" not in settings
    assert (settings["number_of_shards"], settings["refresh_interval"]) == (1, "100ms")
