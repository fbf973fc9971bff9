"""db_migrate: counts, the port script's configuration, the checks made before stopping Synapse."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import stat
import tempfile
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_stack.base import secrets
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.core import apply as apply_module
from matrix_stack.core import postgres
from matrix_stack.core import stack as stack_file
from matrix_stack.core.apply import Report
from matrix_stack.features.data import migrate as db_migrate
from matrix_stack.features.data.counts import Counts, count_postgresql, count_sqlite
from matrix_stack.features.data.migrate import port_config
from tests.unit.base.test_files import (
    ACCOUNT_UID,
    ServiceAccount,
    as_root,
    assert_untouched,
    plant_victims,
)
from tests.unit.helpers import make_settings


def sqlite_with(path: Path, users: int, rooms: int) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
        connection.execute("CREATE TABLE rooms (room_id TEXT)")
        connection.executemany("INSERT INTO users VALUES (?)", [(f"@{n}:x",) for n in range(users)])
        connection.executemany("INSERT INTO rooms VALUES (?)", [(f"!{n}:x",) for n in range(rooms)])
    connection.close()
    return path


def test_count_sqlite_counts_users_and_rooms(tmp_path: Path) -> None:
    database = sqlite_with(tmp_path / "homeserver.db", users=3, rooms=2)

    assert count_sqlite(database) == Counts(users=3, rooms=2)
    assert str(count_sqlite(database)) == "3 users, 2 rooms"


def test_count_sqlite_of_a_file_without_synapse_tables_raises_one_line(tmp_path: Path) -> None:
    database = tmp_path / "homeserver.db"
    sqlite3.connect(database).close()

    with pytest.raises(MatrixStackError, match=r"^cannot count users and rooms in .*: no such"):
        count_sqlite(database)


def test_count_postgresql_asks_synapse_database() -> None:
    seen: list[list[str]] = []

    def runner(argv: Any) -> str:
        seen.append(list(argv))
        return "7\n" if "users" in argv[-1] else "4\n"

    assert count_postgresql(runner) == Counts(users=7, rooms=4)
    assert [argv[:2] for argv in seen] == [["-d", "matrix_synapse"]] * 2


def test_port_config_replaces_only_the_database_block() -> None:
    config = {"server_name": "example.org", "database": {"name": "sqlite3"}, "x": [1]}

    assert yaml.safe_load(port_config(config)) == {
        "server_name": "example.org",
        "database": postgres.SYNAPSE_DATABASE_BLOCK,
        "x": [1],
    }


def test_find_port_script_names_both_places_when_neither_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(db_migrate, "PORT_SCRIPTS", (tmp_path / "a", tmp_path / "b"))

    with pytest.raises(MatrixStackError, match="port script is missing"):
        db_migrate.find_port_script()


def test_find_port_script_takes_the_first_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "b").touch()
    monkeypatch.setattr(db_migrate, "PORT_SCRIPTS", (tmp_path / "a", tmp_path / "b"))

    assert db_migrate.find_port_script() == tmp_path / "b"


def test_check_free_disk_refuses_less_than_twice_the_sqlite_size(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database = tmp_path / "homeserver.db"
    database.write_bytes(b"\0" * 2**20)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(0, 0, 2**20))

    with pytest.raises(MatrixStackError, match="has 1 MiB free; the migration needs about 2 MiB"):
        db_migrate.check_free_disk(database, tmp_path)


class FakeHost:
    """Every side effect of a migration, recorded; the port script fails when told to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port_fails: bool) -> None:
        self.stacks: list[dict[str, Any]] = []
        self.applied: list[str] = []
        self.units: list[str] = []
        self.port_fails = port_fails
        self.targets: list[str] = []
        (tmp_path / "h.db").write_bytes(b"SQLite format 3\0")
        stack = {"server_name": "example.org", "database": "sqlite"}
        monkeypatch.setattr(stack_file, "read_stack", lambda *_root: dict(stack))
        monkeypatch.setattr(stack_file, "write_stack", lambda new, _root: self.stacks.append(new))
        monkeypatch.setattr(db_migrate, "synapse_has_database", lambda: tmp_path / "h.db")
        monkeypatch.setattr(db_migrate, "find_port_script", lambda: Path("/usr/bin/port"))
        monkeypatch.setattr(postgres, "check_server", lambda: None)
        monkeypatch.setattr(postgres, "ensure_database", lambda: [])
        monkeypatch.setattr(postgres, "database_is_empty", lambda: True)
        monkeypatch.setattr(db_migrate, "check_free_disk", lambda _path: None)
        monkeypatch.setattr(db_migrate, "wait_for_background_updates", lambda *_args: None)
        monkeypatch.setattr(db_migrate, "count_sqlite", lambda _path: Counts(2, 1))
        monkeypatch.setattr(db_migrate, "count_postgresql", lambda: Counts(2, 1))
        monkeypatch.setattr(db_migrate, "systemctl", self.units.append)
        monkeypatch.setattr(db_migrate, "run_port_script", self.port)
        monkeypatch.setattr(db_migrate, "wait_until_answering", lambda *_args: True)
        monkeypatch.setattr(apply_module, "apply", self.apply)

    def apply(self, settings: Any, **_options: Any) -> Report:
        self.applied.append(settings.database)
        return Report()

    def port(self, _script: Path, _sqlite: Path, target: db_migrate.Target) -> None:
        self.targets.append(str(target))
        if self.port_fails:
            raise MatrixStackError("port failed (exit 1): boom")


def test_migrate_switches_to_postgresql_and_starts_synapse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=False)
    lines: list[str] = []

    assert db_migrate.migrate(lines.append) == Counts(2, 1)
    assert [stack["database"] for stack in host.stacks] == ["postgresql"]
    assert host.applied == ["postgresql"]
    assert host.units == ["stop", "start"]
    assert lines[:2] == [
        "stopping Synapse",
        "copying 2 users, 1 rooms from " + str(tmp_path / "h.db")
        + " into PostgreSQL database matrix_synapse with port (this can take a while)",
    ]


def test_migrate_failing_half_way_puts_sqlite_back_and_starts_synapse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=True)

    with pytest.raises(MatrixStackError, match=r"^migration failed \(port failed"):
        db_migrate.migrate(lambda _line: None)
    assert [stack["database"] for stack in host.stacks] == ["sqlite"]
    assert host.applied == ["sqlite"]
    assert host.units == ["stop", "start"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["h.db"]


def test_migrate_verified_sets_the_sqlite_file_aside_beside_itself_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    FakeHost(monkeypatch, tmp_path, port_fails=False)
    (tmp_path / "h.db-wal").write_bytes(b"wal")
    lines: list[str] = []

    db_migrate.migrate(lines.append)

    kept = sorted(path.name for path in tmp_path.iterdir())
    assert len(kept) == 2 and re.fullmatch(r"h\.db\.migrated-\d{8}T\d{6}Z", kept[0])
    assert kept[1] == kept[0] + "-wal"
    assert (tmp_path / kept[1]).read_bytes() == b"wal"
    assert lines[-1] == (
        f"set aside the SQLite database {tmp_path / 'h.db'} as {tmp_path / kept[0]}: Synapse's "
        "data is in PostgreSQL database matrix_synapse now; nothing was deleted"
    )


def test_migrate_done_but_unable_to_set_the_sqlite_file_aside_says_synapse_runs_on_postgresql(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=False)

    def refuse(_database: Path, _suffix: str) -> Path:
        raise PermissionError("Operation not permitted")

    monkeypatch.setattr(postgres, "set_aside", refuse)

    with pytest.raises(MatrixStackError) as raised:
        db_migrate.migrate(lambda _line: None)

    assert str(raised.value) == (
        "Synapse runs on PostgreSQL database matrix_synapse with 2 users, 1 rooms, but its old "
        f"SQLite database {tmp_path / 'h.db'} could not be set aside (Operation not permitted): "
        "rename it by hand, to keep it as an old copy"
    )
    assert host.applied == ["postgresql"]
    assert host.units == ["stop", "start"]


def test_migrate_whose_second_count_differs_keeps_the_sqlite_file_where_it_was(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    FakeHost(monkeypatch, tmp_path, port_fails=False)
    after = iter([Counts(2, 1), Counts(1, 1)])
    monkeypatch.setattr(db_migrate, "count_postgresql", lambda: next(after))

    with pytest.raises(MatrixStackError, match=r"^migration failed \(PostgreSQL holds 1 users"):
        db_migrate.migrate(lambda _line: None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["h.db"]


@pytest.mark.parametrize("step", ["port", "answering"])
def test_migrate_going_back_to_sqlite_is_not_refused_by_the_postgresql_guard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: str
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=False)
    # PostgreSQL is live and holds the copied data by then: the guard would refuse SQLite.
    live = tmp_path / "root/etc/matrix-synapse/conf.d/50-matrix-stack.yaml"
    live.parent.mkdir(parents=True)
    live.write_text(yaml.safe_dump({"database": postgres.SYNAPSE_DATABASE_BLOCK}))

    def data(argv: Any) -> str:
        return "3" if "table_name IN" in argv[-1] else "1"

    def apply(settings: Any, database_ready: bool = False, **_options: Any) -> Report:
        if not database_ready:
            postgres.prepare(settings, tmp_path / "root", data)
        host.applied.append(settings.database)
        return Report()

    monkeypatch.setattr(apply_module, "apply", apply)
    interrupt_at(monkeypatch, host, step, keyboard_interrupt)

    with pytest.raises(MatrixStackError, match=r"^migration interrupted; Synapse runs on SQLite"):
        db_migrate.migrate(lambda _line: None)
    assert host.applied[-1] == "sqlite"
    assert host.units[-1] == "start"


def test_wait_for_background_updates_gives_up_with_one_line(tmp_path: Path) -> None:
    database = tmp_path / "homeserver.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE background_updates (update_name TEXT)")
        connection.execute("INSERT INTO background_updates VALUES ('index')")
    connection.close()
    lines: list[str] = []

    with pytest.raises(MatrixStackError, match="still has 1 background updates to run"):
        db_migrate.wait_for_background_updates(database, lines.append, 0, lambda _s: None)
    assert lines == ["waiting for Synapse to finish 1 background updates"]


def test_migrate_to_a_remote_server_stores_the_password_and_checks_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=False)
    statements: list[str] = []
    stored: list[str] = []

    def remote_query(settings: Any, statement: str) -> list[list[str]]:
        statements.append(statement)
        return [["0"]] if "information_schema" in statement else [["2" if "users" in
                                                                     statement else "1"]]

    monkeypatch.setattr(postgres, "remote_query", remote_query)
    checked: list[Path] = []

    def check_remote(settings: Any, passfile: Path = secrets.DATABASE_PASSFILE) -> str:
        checked.append(passfile)
        return "answers (UTF8, C)"

    def store(password: str, check: Any = None) -> None:
        check(tmp_path / ".database.pgpass.new")
        stored.append(password)

    monkeypatch.setattr(postgres, "check_remote", check_remote)
    monkeypatch.setattr(postgres, "check_server", lambda: pytest.fail("local server used"))
    monkeypatch.setattr(secrets, "store_database_password", store)
    remote = {"database_host": "db.example.org", "database_port": 5433,
              "database_name": "synapse", "database_user": "synapse_user"}
    lines: list[str] = []

    assert db_migrate.migrate(lines.append, remote=remote, password="pw") == Counts(2, 1)

    assert stored == ["pw"]
    # The new password is checked from its temporary file before it replaces the passfile.
    assert checked[0] == tmp_path / ".database.pgpass.new"
    assert host.targets == ["PostgreSQL database synapse on db.example.org:5433"]
    assert host.stacks[-1] | remote == host.stacks[-1]
    assert host.stacks[-1]["database"] == "postgresql"
    assert lines[0] == "answers (UTF8, C)"
    assert statements.count("SELECT count(*) FROM users") == 2  # before the switch and after


def test_migrate_to_a_remote_server_needs_a_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    FakeHost(monkeypatch, tmp_path, port_fails=False)
    monkeypatch.setattr(secrets, "has_database_password", lambda: False)
    with pytest.raises(MatrixStackError, match="give it with --password-file"):
        db_migrate.migrate(lambda _line: None, remote={"database_host": "db.example.org"})


# --- the port script's configuration, staged for Synapse's account -------------------------


def fake_port_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, account: ServiceAccount | None = None
) -> list[tuple[str, int, int, int, bytes]]:
    """Fake the port script around run_port_script; return what it finds in its stage."""
    monkeypatch.setattr(db_migrate, "read_merged_config", lambda: {"server_name": "x"})
    monkeypatch.setattr(db_migrate, "lookup_ids", lambda _owner, _group: (ACCOUNT_UID, 0))
    seen: list[tuple[str, int, int, int, bytes]] = []

    def fake_run(argv: list[str], **_options: object) -> None:
        config = Path(argv[-1])
        for path in (config.parent, config):
            status = path.lstat()
            data = path.read_bytes() if stat.S_ISREG(status.st_mode) else b""
            seen.append((path.name, status.st_uid, status.st_gid,
                         stat.S_IMODE(status.st_mode), data))
        if account is not None:
            account.act()

    monkeypatch.setattr(db_migrate, "run", fake_run)
    return seen


@as_root
def test_run_port_script_gives_its_configuration_to_synapses_account_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_port_script(tmp_path, monkeypatch)

    db_migrate.run_port_script(Path("/port"), tmp_path / "db", db_migrate.Target(make_settings()))

    (_stage, stage_uid, _gid, _mode, _data), config = seen
    assert stage_uid == ACCOUNT_UID
    assert config[:4] == ("postgres.yaml", ACCOUNT_UID, 0, 0o600)
    assert yaml.safe_load(config[4])["database"] == postgres.SYNAPSE_DATABASE_BLOCK


@as_root
def test_run_port_script_follows_no_link_synapses_account_plants_in_its_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp").mkdir(mode=0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    victim, victim_directory = plant_victims(tmp_path)
    account = ServiceAccount(monkeypatch, tmp_path / "tmp", {"postgres.yaml": victim})
    fake_port_script(tmp_path, monkeypatch, account)

    with contextlib.suppress(OSError):
        db_migrate.run_port_script(
            Path("/port"), tmp_path / "db", db_migrate.Target(make_settings()))

    assert_untouched(victim, victim_directory)


# --- interruptions: Ctrl-C, SIGTERM or any BaseException mid-migration ---------------------


def interrupt_at(
    monkeypatch: pytest.MonkeyPatch, host: FakeHost, step: str, interrupt: Callable[[], None]
) -> None:
    """Make one step of the migration (stop, port, answering) be interrupted."""
    if step == "stop":
        def systemctl(action: str) -> None:
            host.units.append(action)
            if action == "stop":
                interrupt()
        monkeypatch.setattr(db_migrate, "systemctl", systemctl)
    elif step == "port":
        monkeypatch.setattr(db_migrate, "run_port_script", lambda *_args: interrupt())
    else:
        def answering(*_args: object) -> bool:
            interrupt()
            return True
        monkeypatch.setattr(db_migrate, "wait_until_answering", answering)


def keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(("step", "stacks", "units"), [
    ("stop", ["sqlite"], ["stop", "start"]),
    ("port", ["sqlite"], ["stop", "start"]),
    ("answering", ["postgresql", "sqlite"], ["stop", "start", "start"]),
])
def test_migrate_interrupted_by_ctrl_c_puts_sqlite_back_starts_synapse_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: str, stacks: list[str],
    units: list[str],
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=False)
    interrupt_at(monkeypatch, host, step, keyboard_interrupt)
    lines: list[str] = []

    with pytest.raises(MatrixStackError) as raised:
        db_migrate.migrate(lines.append)

    assert str(raised.value) == (
        f"migration interrupted; Synapse runs on SQLite again, {tmp_path / 'h.db'} untouched; "
        "empty PostgreSQL database matrix_synapse before trying again"
    )
    assert raised.value.exit_code == 1
    assert [stack["database"] for stack in host.stacks] == stacks
    assert host.applied == stacks
    assert host.units == units
    assert lines[-1] == "interrupted: going back to SQLite"


def test_migrate_terminated_by_sigterm_puts_sqlite_back_and_restores_the_handler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=False)
    interrupt_at(monkeypatch, host, "port", lambda: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)

    with pytest.raises(MatrixStackError, match=r"^migration interrupted; Synapse runs on SQLite"):
        db_migrate.migrate(lambda _line: None)

    assert [stack["database"] for stack in host.stacks] == ["sqlite"]
    assert host.applied == ["sqlite"]
    assert host.units == ["stop", "start"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_migrate_hit_by_any_other_exception_still_puts_sqlite_back_then_lets_it_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = FakeHost(monkeypatch, tmp_path, port_fails=False)

    def bug() -> None:
        raise SystemExit(3)

    interrupt_at(monkeypatch, host, "port", bug)

    with pytest.raises(SystemExit):
        db_migrate.migrate(lambda _line: None)

    assert [stack["database"] for stack in host.stacks] == ["sqlite"]
    assert host.applied == ["sqlite"]
    assert host.units == ["stop", "start"]
