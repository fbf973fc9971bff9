"""db_migrate: counts, the port script's configuration, the checks made before stopping Synapse."""

from __future__ import annotations

import shutil
import sqlite3
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_stack import answers, db_migrate, postgres, secrets
from matrix_stack.db_counts import Counts, count_postgresql, count_sqlite
from matrix_stack.db_migrate import port_config
from matrix_stack.errors import MatrixStackError


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
        stack = {"server_name": "example.org", "database": "sqlite"}
        monkeypatch.setattr(answers, "read_stack", lambda: dict(stack))
        monkeypatch.setattr(answers, "write_stack", self.stacks.append)
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
        monkeypatch.setattr(
            db_migrate, "apply", lambda settings, **_: self.applied.append(settings.database)
        )

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
    monkeypatch.setattr(postgres, "check_remote", lambda settings: "answers (UTF8, C)")
    monkeypatch.setattr(postgres, "check_server", lambda: pytest.fail("local server used"))
    monkeypatch.setattr(secrets, "store_database_password", lambda password: stored.append(
        password))
    remote = {"database_host": "db.example.org", "database_port": 5433,
              "database_name": "synapse", "database_user": "synapse_user"}
    lines: list[str] = []

    assert db_migrate.migrate(lines.append, remote=remote, password="pw") == Counts(2, 1)

    assert stored == ["pw"]
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
