"""matrix-stack-admin workers status: the layout line and each process's line and verdict."""

from __future__ import annotations

from matrix_stack.cli.workers import Process, layout_line
from matrix_stack.core.settings import from_mapping


def settings(workers: str):  # type: ignore[no-untyped-def]
    return from_mapping({"server_name": "example.org", "database": "postgresql",
                         "workers": workers})


def test_layout_line_shows_what_auto_means_on_these_cores() -> None:
    assert layout_line(settings("auto"), 2) == (
        "workers: auto = sync=1,client=1,federation-reader=1,federation-sender=1,media=1")
    assert layout_line(settings("sync=2"), 2) == "workers: sync=2"
    assert layout_line(settings("off"), 2) == "workers: off (one Synapse process)"


def test_process_line_and_verdict_follow_unit_health_and_replication() -> None:
    worker = Process("sync1", "matrix-synapse-worker@sync1", 8110, "active", True, True,
                     12.34, 97.6)

    assert worker.ok
    assert worker.line() == (
        "sync1                matrix-synapse-worker@sync1: active, answering on "
        "127.0.0.1:8110, replication connected; cpu 12.3 s, memory 98 MiB")
    assert not Process("sync1", "u", 8110, "active", True, False, 0, 0).ok
    assert not Process("sync1", "u", 8110, "failed", True, True, 0, 0).ok
    assert not Process("sync1", "u", 8110, "active", False, True, 0, 0).ok
    assert Process("main", "matrix-synapse", 8008, "active", True, None, 0, 0).ok
