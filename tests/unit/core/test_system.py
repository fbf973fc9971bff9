"""system: the record of units left to restart, and the line saying what a failure left."""

from __future__ import annotations

from pathlib import Path

from matrix_stack.base.paths import PENDING_RESTARTS_PATH
from matrix_stack.core.system import (
    describe_state,
    read_pending,
    restart_pending,
    write_pending,
)
from tests.unit.helpers import FakeSystem

PENDING = "var/lib/matrix-stack/pending-restarts"


def test_pending_restarts_path_is_root_only_state() -> None:
    assert str(PENDING_RESTARTS_PATH) == "/" + PENDING


def test_write_pending_keeps_the_restart_order_in_a_root_only_file(tmp_path: Path) -> None:
    write_pending(["apache2", "matrix-synapse", "apache2"], tmp_path)

    record = tmp_path / PENDING
    assert (record.read_text(), record.stat().st_mode & 0o777) == (
        "matrix-synapse\napache2\n", 0o600
    )
    assert read_pending(tmp_path) == ["matrix-synapse", "apache2"]


def test_write_pending_of_no_unit_removes_the_record(tmp_path: Path) -> None:
    write_pending(["coturn"], tmp_path)

    write_pending([], tmp_path)

    assert not (tmp_path / PENDING).exists()
    assert read_pending(tmp_path) == []


def test_restart_pending_without_a_record_restarts_nothing(tmp_path: Path) -> None:
    system = FakeSystem()

    assert restart_pending(system, tmp_path) == ([], [])
    assert system.calls == []


def test_restart_pending_says_so_and_keeps_only_what_failed_again(tmp_path: Path) -> None:
    write_pending(["matrix-synapse", "coturn"], tmp_path)
    system = FakeSystem(failing=[{"coturn"}])

    lines, failed = restart_pending(system, tmp_path)

    assert system.calls == [("restart", "matrix-synapse", "coturn")]
    assert lines == [
        "restart matrix-synapse (left pending by an interrupted apply)",
        "warning: coturn, left pending by an interrupted apply, failed to start "
        "(see: journalctl -u coturn)",
    ]
    assert failed == ["coturn"]
    assert read_pending(tmp_path) == ["coturn"]


def test_describe_state_with_nothing_done_says_nothing_changed() -> None:
    assert describe_state([], {}, [], []) == "nothing was changed"


def test_describe_state_names_what_could_not_be_put_back_and_what_did_not_start() -> None:
    state = describe_state(
        [Path("/etc/a")], {Path("/etc/b"): "Is a directory"}, ["apache2"], ["coturn"]
    )

    assert state == (
        "could not put back /etc/b (Is a directory); every other file is back as it was and "
        "apache2 was restarted on them; coturn did not start again (see: journalctl -u coturn)"
    )
