"""Tests for synapse_db: where the database is, and the offline reset on Synapse's schema."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import DEFAULT_SQLITE_PATH
from matrix_stack.cli.passwd import _passwd_offline
from matrix_stack.synapse.db import (
    POSTGRESQL_RESET,
    RESET_STATEMENTS,
    SQLITE_RESET,
    Database,
    Engine,
    ResetCounts,
    parse_database,
    peer_user,
    reset_password_as,
    reset_password_offline,
    reset_password_sqlite,
)

SCHEMA_PATH = Path(__file__).parents[2] / "data/synapse/schema.sql"
# Synapse's pushers table, copied from Debian sid's matrix-synapse 1.160.0,
# synapse/storage/schema/main/full_schemas/72/full.sql.sqlite (line 100), with the columns of
# delta/73/02add_pusher_enabled.sql, delta/73/03pusher_device_id.sql and
# delta/85/02_add_instance_names.sql. access_token holds an access_tokens.id.
PUSHERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS "pushers" ( id BIGINT PRIMARY KEY, user_name TEXT NOT NULL, access_token BIGINT DEFAULT NULL, profile_tag TEXT NOT NULL, kind TEXT NOT NULL, app_id TEXT NOT NULL, app_display_name TEXT NOT NULL, device_display_name TEXT NOT NULL, pushkey TEXT NOT NULL, ts BIGINT NOT NULL, lang TEXT, data TEXT, last_stream_ordering INTEGER, last_success BIGINT, failing_since BIGINT, UNIQUE (app_id, pushkey, user_name) );
ALTER TABLE pushers ADD COLUMN enabled BOOLEAN;
ALTER TABLE pushers ADD COLUMN device_id TEXT;
ALTER TABLE pushers ADD COLUMN instance_name TEXT;
"""  # noqa: E501 - Synapse's line, as it is
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
NEW_HASH = "$2b$04$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01"
DEBIAN_DATABASE = {
    "database": {
        "name": "sqlite3",
        "args": {"database": "/var/lib/matrix-synapse/homeserver.db"},
    }
}

# ---------------------------------------------------------------------------------------------
# The SQL
# ---------------------------------------------------------------------------------------------


def test_sqlite_reset_statements_are_synapse_queries_with_question_marks() -> None:
    assert SQLITE_RESET.update_password == "UPDATE users SET password_hash = ? WHERE name = ?"
    assert SQLITE_RESET.delete_access_tokens == "DELETE FROM access_tokens WHERE user_id = ?"
    assert SQLITE_RESET.delete_refresh_tokens == "DELETE FROM refresh_tokens WHERE user_id = ?"
    assert SQLITE_RESET.delete_pushers == (
        "DELETE FROM pushers WHERE user_name = ? AND access_token IS NOT NULL"
    )


def test_postgresql_reset_statements_are_the_same_queries_with_percent_s() -> None:
    assert POSTGRESQL_RESET.update_password == (
        "UPDATE users SET password_hash = %s WHERE name = %s"
    )
    assert POSTGRESQL_RESET.delete_access_tokens == "DELETE FROM access_tokens WHERE user_id = %s"
    assert POSTGRESQL_RESET.delete_refresh_tokens == (
        "DELETE FROM refresh_tokens WHERE user_id = %s"
    )
    assert POSTGRESQL_RESET.delete_pushers == (
        "DELETE FROM pushers WHERE user_name = %s AND access_token IS NOT NULL"
    )


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")


@as_root
def test_peer_user_is_the_role_for_a_socket_connection() -> None:
    assert peer_user({"user": "root", "host": "/var/run/postgresql"}) == "root"
    assert peer_user({"user": "root"}) == "root"


def test_peer_user_is_none_over_tcp_or_for_an_unknown_unix_user() -> None:
    assert peer_user({"user": "root", "host": "db.example.org"}) is None
    assert peer_user({"user": "no-such-user-here", "host": "/var/run/postgresql"}) is None
    assert peer_user({"host": "/var/run/postgresql"}) is None


@as_root
def test_a_reset_run_as_another_user_brings_its_error_back_as_one_line(tmp_path: Path) -> None:
    # No server behind this socket directory: the child, run as nobody, cannot connect.
    connect = {"host": str(tmp_path), "dbname": "matrix_synapse", "user": "nobody"}
    with pytest.raises(MatrixStackError) as raised:
        reset_password_as("nobody", connect, ALICE, NEW_HASH)
    message = str(raised.value)
    assert message.startswith((
        "cannot connect to Synapse's database matrix_synapse: ",
        "Synapse uses PostgreSQL but python3-psycopg2 is not installed",
    )), message
    assert "\n" not in message and NEW_HASH not in message


def test_reset_statements_are_keyed_by_engine() -> None:
    assert RESET_STATEMENTS == {Engine.SQLITE: SQLITE_RESET, Engine.POSTGRESQL: POSTGRESQL_RESET}


# ---------------------------------------------------------------------------------------------
# parse_database
# ---------------------------------------------------------------------------------------------


def test_parse_database_with_debian_homeserver_yaml_is_its_sqlite_file() -> None:
    assert parse_database(DEBIAN_DATABASE) == Database(Engine.SQLITE, DEFAULT_SQLITE_PATH)


def test_parse_database_without_database_block_is_debian_default_file() -> None:
    assert parse_database({}) == Database(
        Engine.SQLITE, Path("/var/lib/matrix-synapse/homeserver.db")
    )


def test_parse_database_with_a_relative_sqlite_path_is_under_synapse_working_directory() -> None:
    config = {"database": {"name": "sqlite3", "args": {"database": "other.db"}}}
    assert parse_database(config).sqlite_path == Path("/var/lib/matrix-synapse/other.db")


def test_parse_database_without_a_name_is_sqlite_as_in_synapse() -> None:
    config = {"database": {"args": {"database": "/srv/synapse.db"}}}
    assert parse_database(config) == Database(Engine.SQLITE, Path("/srv/synapse.db"))


def test_parse_database_with_only_legacy_database_path_is_that_file() -> None:
    assert parse_database({"database_path": "/srv/old.db"}).sqlite_path == Path("/srv/old.db")


def test_parse_database_with_database_block_ignores_legacy_database_path() -> None:
    config = {**DEBIAN_DATABASE, "database_path": "/srv/old.db"}
    assert parse_database(config).sqlite_path == DEFAULT_SQLITE_PATH


def test_parse_database_with_psycopg2_keeps_connection_args_without_cp_pool_keys() -> None:
    config = {
        "database": {
            "name": "psycopg2",
            "txn_limit": 10000,
            "args": {
                "user": "synapse",
                "password": "db-s3cret",
                "dbname": "synapse",
                "host": "localhost",
                "port": 5432,
                "cp_min": 5,
                "cp_max": 10,
                "keepalives_idle": 10,
            },
        }
    }
    database = parse_database(config)
    assert database.engine is Engine.POSTGRESQL
    assert database.sqlite_path is None
    assert dict(database.connect_args) == {
        "user": "synapse",
        "password": "db-s3cret",
        "dbname": "synapse",
        "host": "localhost",
        "port": 5432,
        "keepalives_idle": 10,
    }
    assert "db-s3cret" not in repr(database)


def test_parse_database_with_several_databases_takes_the_one_holding_main() -> None:
    config = {
        "databases": {
            "state_db": {"name": "sqlite3", "data_stores": ["state"], "args": {"database": "s.db"}},
            "main_db": {"name": "psycopg2", "data_stores": ["main"], "args": {"dbname": "m"}},
        }
    }
    assert parse_database(config) == Database(Engine.POSTGRESQL, connect_args={"dbname": "m"})


def test_parse_database_with_database_and_databases_refuses() -> None:
    with pytest.raises(MatrixStackError, match="both database and databases"):
        parse_database({**DEBIAN_DATABASE, "databases": {"x": {"name": "sqlite3"}}})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"database": {"name": "mysql", "args": {}}},
            "Synapse's database type 'mysql' is not sqlite3 or psycopg2",
        ),
        (
            {"database": {"name": "sqlite3"}},
            "database.args.database in Synapse's configuration is not set",
        ),
        (
            {"database": {"name": "sqlite3", "args": {"database": ":memory:"}}},
            "Synapse's SQLite database :memory: is not a file to update",
        ),
        (
            {"database": {"name": "sqlite3", "args": ["database"]}},
            "database.args in Synapse's configuration is not a mapping",
        ),
        ({"database": "sqlite3"}, "database in Synapse's configuration is not a mapping"),
    ],
)
def test_parse_database_with_a_bad_block_refuses(config: Mapping[str, Any], message: str) -> None:
    with pytest.raises(MatrixStackError) as raised:
        parse_database(config)
    assert str(raised.value) == message


# ---------------------------------------------------------------------------------------------
# The reset on SQLite
# ---------------------------------------------------------------------------------------------


def fill(connection: sqlite3.Connection) -> None:
    """Give alice and bob a password, devices, keys, tokens, pushers and a sent event each.

    Each has an HTTP pusher made with its first access token, one made with a token already
    gone (refreshed away), and an email pusher made without a session (access_token NULL).
    """
    connection.executemany(
        "INSERT INTO users (name, password_hash, creation_ts) VALUES (?, ?, 1795766819)",
        [(ALICE, "$2b$12$old-alice"), (BOB, "$2b$12$old-bob")],
    )
    for user, base in ((ALICE, 1), (BOB, 10)):
        connection.executemany(
            "INSERT INTO devices (user_id, device_id, display_name) VALUES (?, ?, 'phone')",
            [(user, f"DEV{base}"), (user, f"DEV{base + 1}")],
        )
        connection.execute(
            "INSERT INTO e2e_device_keys_json VALUES (?, ?, 1, '{}')", (user, f"DEV{base}")
        )
        connection.execute(
            "INSERT INTO refresh_tokens (id, user_id, device_id, token) VALUES (?, ?, ?, ?)",
            (base, user, f"DEV{base}", f"syr_{base}"),
        )
        connection.executemany(
            "INSERT INTO access_tokens (id, user_id, device_id, token, refresh_token_id)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (base, user, f"DEV{base}", f"syt_{base}", base),
                (base + 1, user, f"DEV{base + 1}", f"syt_{base + 1}", None),
                (base + 2, user, None, f"syt_{base + 2}", None),
            ],
        )
        connection.execute(
            "INSERT INTO events (stream_ordering, topological_ordering, event_id, type, room_id,"
            " processed, outlier) VALUES (?, 1, ?, 'm.room.message', '!room:example.org', 1, 0)",
            (base, f"$e{base}"),
        )
        connection.execute(
            "INSERT INTO event_txn_id VALUES (?, '!room:example.org', ?, ?, 'txn', 1)",
            (f"$e{base}", user, base),
        )
        connection.executemany(
            "INSERT INTO pushers (id, user_name, access_token, profile_tag, kind, app_id,"
            " app_display_name, device_display_name, pushkey, ts, device_id)"
            " VALUES (?, ?, ?, '', ?, ?, 'App', 'phone', ?, 1, ?)",
            [
                (base, user, base, "http", "im.app", f"push{base}", f"DEV{base}"),
                (base + 1, user, 999 + base, "http", "im.app", f"push{base + 1}", f"DEV{base}"),
                (base + 2, user, None, "email", "m.email", f"mail{base}", None),
            ],
        )


@pytest.fixture
def sqlite_root(tmp_path: Path) -> Path:
    """Return a root holding a Synapse SQLite database in WAL mode at Debian's path."""
    path = tmp_path / str(DEFAULT_SQLITE_PATH).lstrip("/")
    path.parent.mkdir(parents=True)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.executescript(SCHEMA_PATH.read_text(encoding="utf-8"))
    connection.executescript(PUSHERS_SCHEMA)
    fill(connection)
    connection.commit()
    connection.close()
    return tmp_path


def rows(root: Path, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Return the rows of a query on the database under root."""
    connection = sqlite3.connect(root / str(DEFAULT_SQLITE_PATH).lstrip("/"))
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


def snapshot(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of every table, to show what a reset left alone."""
    tables = [name for (name,) in rows(root, "SELECT name FROM sqlite_master WHERE type='table'")]
    return {table: sorted(rows(root, f"SELECT * FROM {table}"), key=repr) for table in tables}


def test_reset_password_offline_sets_the_hash_of_that_user_only(sqlite_root: Path) -> None:
    reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root)
    assert rows(sqlite_root, "SELECT name, password_hash FROM users ORDER BY name") == [
        (ALICE, NEW_HASH),
        (BOB, "$2b$12$old-bob"),
    ]


def test_reset_password_offline_deletes_that_user_tokens_and_returns_the_count(
    sqlite_root: Path,
) -> None:
    assert reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root) == (
        ResetCounts(access_tokens=3, pushers=2)
    )
    assert rows(sqlite_root, "SELECT user_id, token FROM access_tokens ORDER BY id") == [
        (BOB, "syt_10"),
        (BOB, "syt_11"),
        (BOB, "syt_12"),
    ]
    assert rows(sqlite_root, "SELECT user_id, token FROM refresh_tokens") == [(BOB, "syr_10")]


def test_reset_password_offline_deletes_that_user_pushers_made_with_a_session(
    sqlite_root: Path,
) -> None:
    reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root)
    assert rows(sqlite_root, "SELECT user_name, pushkey FROM pushers ORDER BY id") == [
        (ALICE, "mail1"),
        (BOB, "push10"),
        (BOB, "push11"),
        (BOB, "mail10"),
    ]


def test_reset_password_offline_cascades_like_synapse_with_foreign_keys_on(
    sqlite_root: Path,
) -> None:
    reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root)
    # event_txn_id.token_id REFERENCES access_tokens ON DELETE CASCADE.
    assert rows(sqlite_root, "SELECT user_id, token_id FROM event_txn_id") == [(BOB, 10)]
    assert rows(sqlite_root, "PRAGMA foreign_key_check") == []


def test_reset_password_offline_keeps_devices_and_keys(sqlite_root: Path) -> None:
    before = snapshot(sqlite_root)
    reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root)
    after = snapshot(sqlite_root)
    for table in ("devices", "e2e_device_keys_json", "events"):
        assert after[table] == before[table]
    changed = {table for table in before if before[table] != after[table]}
    assert changed == {"users", "access_tokens", "refresh_tokens", "event_txn_id", "pushers"}


def test_reset_password_offline_of_a_user_without_tokens_returns_zero(sqlite_root: Path) -> None:
    reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root)
    assert reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root) == (
        ResetCounts(access_tokens=0, pushers=0)
    )


def test_reset_password_offline_of_an_unknown_user_refuses_and_changes_nothing(
    sqlite_root: Path,
) -> None:
    before = snapshot(sqlite_root)
    with pytest.raises(MatrixStackError) as raised:
        reset_password_offline(DEBIAN_DATABASE, "@x:y", NEW_HASH, root=sqlite_root)
    assert str(raised.value) == "no user @x:y on this server"
    assert snapshot(sqlite_root) == before


def test_reset_password_offline_matches_the_name_exactly(sqlite_root: Path) -> None:
    with pytest.raises(MatrixStackError, match="no user @Alice:example.org on this server"):
        reset_password_offline(DEBIAN_DATABASE, "@Alice:example.org", NEW_HASH, root=sqlite_root)


def test_reset_password_offline_keeps_the_database_in_wal_mode(sqlite_root: Path) -> None:
    reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root)
    assert rows(sqlite_root, "PRAGMA journal_mode") == [("wal",)]
    assert sorted(path.name for path in (sqlite_root / "var/lib/matrix-synapse").iterdir()) == [
        "homeserver.db"
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the database to another owner")
def test_reset_password_offline_as_root_leaves_the_wal_files_to_the_database_owner(
    sqlite_root: Path,
) -> None:
    # SQLite run as root gives the -wal and -shm files it creates to the database's owner, so
    # the matrix-synapse user can still open them after a reset run by root.
    directory = sqlite_root / "var/lib/matrix-synapse"
    database = directory / "homeserver.db"
    os.chown(database, 4242, 4242)
    # Synapse holding the database open keeps the -wal and -shm files after the reset.
    synapse = sqlite3.connect(database)
    synapse.execute("SELECT count(*) FROM users").fetchall()
    try:
        reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=sqlite_root)
        owners = {path.name: path.stat().st_uid for path in directory.iterdir()}
    finally:
        synapse.close()
    assert owners == {"homeserver.db": 4242, "homeserver.db-wal": 4242, "homeserver.db-shm": 4242}


def test_reset_password_offline_with_a_missing_database_refuses_and_creates_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(MatrixStackError) as raised:
        reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=tmp_path)
    assert str(raised.value) == (
        "cannot open Synapse's database /var/lib/matrix-synapse/homeserver.db: "
        "unable to open database file"
    )
    assert list(tmp_path.iterdir()) == []


def test_reset_password_offline_with_a_database_not_synapse_names_it(tmp_path: Path) -> None:
    path = tmp_path / "var/lib/matrix-synapse/homeserver.db"
    path.parent.mkdir(parents=True)
    sqlite3.connect(path).close()
    with pytest.raises(MatrixStackError) as raised:
        reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=tmp_path)
    assert str(raised.value) == (
        "cannot update Synapse's database /var/lib/matrix-synapse/homeserver.db: "
        "no such table: users"
    )


@pytest.fixture
def locked_database(sqlite_root: Path) -> Iterator[Path]:
    """Yield the database path while another connection holds its write lock."""
    path = sqlite_root / str(DEFAULT_SQLITE_PATH).lstrip("/")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield path
    finally:
        holder.rollback()
        holder.close()


def test_reset_password_sqlite_while_locked_says_to_stop_synapse(locked_database: Path) -> None:
    with pytest.raises(MatrixStackError) as raised:
        reset_password_sqlite(locked_database, DEFAULT_SQLITE_PATH, ALICE, NEW_HASH, timeout=0.05)
    assert str(raised.value) == (
        "Synapse's database /var/lib/matrix-synapse/homeserver.db is locked; "
        "stop matrix-synapse and try again"
    )


def test_reset_password_sqlite_waits_for_a_short_lock(sqlite_root: Path) -> None:
    path = sqlite_root / str(DEFAULT_SQLITE_PATH).lstrip("/")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.2, holder.rollback)
    release.start()
    try:
        assert reset_password_sqlite(path, DEFAULT_SQLITE_PATH, ALICE, NEW_HASH, timeout=5) == (
            ResetCounts(access_tokens=3, pushers=2)
        )
    finally:
        release.join()
        holder.close()


def synapse_schema_directory() -> Path | None:
    """Return Synapse's main schema directory in an extracted Debian sid test root, if any."""
    found = [
        path / "usr/lib/python3/dist-packages/synapse/storage/schema/main"
        for path in Path("/var/cache/matrix-stack-tests").glob("sid-*.d")
    ]
    found = [path for path in found if (path / "full_schemas/72/full.sql.sqlite").is_file()]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


SYNAPSE_SCHEMA = synapse_schema_directory()


@pytest.mark.skipif(SYNAPSE_SCHEMA is None, reason="no extracted Debian sid test root")
def test_reset_password_offline_on_synapse_full_schema_works(tmp_path: Path) -> None:
    assert SYNAPSE_SCHEMA is not None
    path = tmp_path / str(DEFAULT_SQLITE_PATH).lstrip("/")
    path.parent.mkdir(parents=True)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA foreign_keys = ON")
    scripts = [
        "full_schemas/72/full.sql.sqlite",
        "delta/73/03users_approved_column.sql",
        "delta/80/01_users_alter_locked.sql",
        "delta/85/01_add_suspended.sql",
        "delta/73/02add_pusher_enabled.sql",
        "delta/73/03pusher_device_id.sql",
    ]
    for script in scripts:
        connection.executescript((SYNAPSE_SCHEMA / script).read_text(encoding="utf-8"))
    fill(connection)
    connection.commit()
    connection.close()

    assert reset_password_offline(DEBIAN_DATABASE, ALICE, NEW_HASH, root=tmp_path) == (
        ResetCounts(access_tokens=3, pushers=2)
    )
    assert rows(tmp_path, "SELECT user_name, pushkey FROM pushers ORDER BY id") == [
        (ALICE, "mail1"), (BOB, "push10"), (BOB, "push11"), (BOB, "mail10")
    ]
    assert rows(tmp_path, "SELECT password_hash FROM users WHERE name = ?", [ALICE]) == [
        (NEW_HASH,)
    ]
    assert rows(tmp_path, "SELECT DISTINCT user_id FROM access_tokens") == [(BOB,)]
    assert rows(tmp_path, "SELECT DISTINCT user_id FROM refresh_tokens") == [(BOB,)]
    assert len(rows(tmp_path, "SELECT * FROM devices WHERE user_id = ?", [ALICE])) == 2


# ---------------------------------------------------------------------------------------------
# The reset on PostgreSQL, through a recording stand-in for psycopg2
# ---------------------------------------------------------------------------------------------


class FakePsycopg2Error(Exception):
    pass


class FakeCursor:
    def __init__(self, log: list[Any], users: set[str], tokens: dict[str, int]) -> None:
        self.log = log
        self.users = users
        self.tokens = tokens
        self.rowcount = -1

    def execute(self, sql: str, parameters: Sequence[str]) -> None:
        self.log.append(("execute", sql, tuple(parameters)))
        user = parameters[-1]
        if sql.startswith("UPDATE"):
            self.rowcount = 1 if user in self.users else 0
        elif "FROM access_tokens" in sql:
            self.rowcount = self.tokens.get(user, 0)
        elif "FROM pushers" in sql:
            self.rowcount = 1 if user in self.tokens else 0
        else:
            self.rowcount = 1


class FakeConnection:
    def __init__(self, log: list[Any], users: set[str], tokens: dict[str, int]) -> None:
        self.log = log
        self.users = users
        self.tokens = tokens

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.log, self.users, self.tokens)

    def commit(self) -> None:
        self.log.append(("commit",))

    def rollback(self) -> None:
        self.log.append(("rollback",))

    def close(self) -> None:
        self.log.append(("close",))


class FakePsycopg2(types.ModuleType):
    """Records connect() and the statements; knows alice (2 tokens, 1 pusher) and bob."""

    Error = FakePsycopg2Error

    def __init__(self) -> None:
        super().__init__("psycopg2")
        self.log: list[Any] = []
        self.refuse_connection = False

    def connect(self, **kwargs: Any) -> FakeConnection:
        self.log.append(("connect", kwargs))
        if self.refuse_connection:
            raise FakePsycopg2Error(
                'connection to server at "db" failed: FATAL:  password authentication failed\n'
                "DETAIL:  more"
            )
        return FakeConnection(self.log, {ALICE, BOB}, {ALICE: 2})


POSTGRESQL_CONFIG = {
    "database": {
        "name": "psycopg2",
        "args": {"user": "synapse", "password": "db-s3cret", "dbname": "synapse", "cp_min": 5},
    }
}


@pytest.fixture
def fake_psycopg2(monkeypatch: pytest.MonkeyPatch) -> FakePsycopg2:
    module = FakePsycopg2()
    monkeypatch.setitem(sys.modules, "psycopg2", module)
    return module


def test_reset_password_offline_on_postgresql_runs_percent_s_sql_in_one_transaction(
    fake_psycopg2: FakePsycopg2,
) -> None:
    assert reset_password_offline(POSTGRESQL_CONFIG, ALICE, NEW_HASH) == (
        ResetCounts(access_tokens=2, pushers=1)
    )
    assert fake_psycopg2.log == [
        ("connect", {"user": "synapse", "password": "db-s3cret", "dbname": "synapse"}),
        ("execute", "UPDATE users SET password_hash = %s WHERE name = %s", (NEW_HASH, ALICE)),
        ("execute", "DELETE FROM access_tokens WHERE user_id = %s", (ALICE,)),
        ("execute", "DELETE FROM refresh_tokens WHERE user_id = %s", (ALICE,)),
        (
            "execute",
            "DELETE FROM pushers WHERE user_name = %s AND access_token IS NOT NULL",
            (ALICE,),
        ),
        ("commit",),
        ("close",),
    ]


def test_reset_password_offline_on_postgresql_of_an_unknown_user_rolls_back(
    fake_psycopg2: FakePsycopg2,
) -> None:
    with pytest.raises(MatrixStackError, match="^no user @x:y on this server$"):
        reset_password_offline(POSTGRESQL_CONFIG, "@x:y", NEW_HASH)
    assert [entry[0] for entry in fake_psycopg2.log] == ["connect", "execute", "rollback", "close"]


def test_reset_password_offline_on_postgresql_unreachable_says_so_in_one_line(
    fake_psycopg2: FakePsycopg2,
) -> None:
    fake_psycopg2.refuse_connection = True
    with pytest.raises(MatrixStackError) as raised:
        reset_password_offline(POSTGRESQL_CONFIG, ALICE, NEW_HASH)
    assert str(raised.value) == (
        'cannot connect to Synapse\'s database synapse: connection to server at "db" failed: '
        "FATAL:  password authentication failed"
    )


def test_reset_password_offline_on_postgresql_without_psycopg2_says_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes "import psycopg2" raise ImportError.
    modules: dict[str, Any] = sys.modules
    monkeypatch.setitem(modules, "psycopg2", None)
    with pytest.raises(MatrixStackError) as raised:
        reset_password_offline(POSTGRESQL_CONFIG, ALICE, NEW_HASH)
    assert str(raised.value) == (
        "Synapse uses PostgreSQL but python3-psycopg2 is not installed; install it"
    )


# ---------------------------------------------------------------------------------------------
# The reset on a real PostgreSQL server with Synapse's schema, where one can be started
# ---------------------------------------------------------------------------------------------


def postgresql_bin() -> Path | None:
    """Return the newest PostgreSQL server's bin directory, if a server package is installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: path.parts)
    return found[-1].parent if found else None


def postgresql_missing() -> str:
    """Return why a throw-away PostgreSQL server cannot be run here, or "" if it can."""
    if SYNAPSE_SCHEMA is None:
        return "no extracted Debian sid test root"
    if importlib.util.find_spec("psycopg2") is None:
        return "python3-psycopg2 is not installed"
    if postgresql_bin() is None:
        return "no PostgreSQL server installed"
    if os.geteuid() != 0:
        return "needs root to run PostgreSQL as the postgres user"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    return ""


@pytest.fixture
def postgresql() -> Iterator[dict[str, Any]]:
    """Yield Synapse's psycopg2 args for a throw-away server holding Synapse's schema."""
    missing = postgresql_missing()
    if missing:
        pytest.skip(missing)
    binaries = postgresql_bin()
    assert binaries is not None
    # Not in tmp_path: pytest's directories are root's alone, and the server runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="matrix-stack-postgresql-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        os.chown(directory, pwd.getpwnam("postgres").pw_uid, -1)
        data = str(directory / "data")
        subprocess.run(
            [str(binaries / "initdb"), "-D", data, "-A", "trust", "-E", "UTF8", "--no-sync"],
            user="postgres",
            capture_output=True,
            check=True,
            cwd=directory,
        )
        server = subprocess.Popen(
            [str(binaries / "postgres"), "-D", data, "-k", str(directory), "-p", "55432"]
            + ["-c", "listen_addresses=", "-c", "fsync=off"],
            user="postgres",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=directory,
        )
        args = {"user": "postgres", "host": str(directory), "port": 55432, "cp_min": 5}
        load_synapse_schema(args, directory / ".s.PGSQL.55432")
        yield {**args, "dbname": "synapse"}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(directory)


def load_synapse_schema(args: Mapping[str, Any], socket: Path) -> None:
    """Create database synapse with Synapse's schema, alice and bob, their tokens and a device."""
    assert SYNAPSE_SCHEMA is not None
    psycopg2 = importlib.import_module("psycopg2")
    for _ in range(200):
        if socket.exists():
            break
        time.sleep(0.05)
    connection = psycopg2.connect(dbname="postgres", **without_pool(args))
    connection.autocommit = True
    # Synapse requires C collation (synapse/storage/engines/postgres.py).
    connection.cursor().execute("CREATE DATABASE synapse TEMPLATE template0 LC_COLLATE 'C'")
    connection.close()
    connection = psycopg2.connect(dbname="synapse", **without_pool(args))
    cursor = connection.cursor()
    schema = SYNAPSE_SCHEMA.parent
    for script in [
        "common/full_schemas/72/full.sql.postgres",
        "main/full_schemas/72/full.sql.postgres",
        "main/delta/73/03users_approved_column.sql",
        "main/delta/80/01_users_alter_locked.sql",
        "main/delta/85/01_add_suspended.sql",
        "main/delta/73/02add_pusher_enabled.sql",
        "main/delta/73/03pusher_device_id.sql",
    ]:
        cursor.execute((schema / script).read_text(encoding="utf-8"))
    cursor.execute(
        "INSERT INTO users (name, password_hash, creation_ts) VALUES (%s, 'old', 1), "
        "(%s, 'old', 1)",
        (ALICE, BOB),
    )
    cursor.execute(
        "INSERT INTO refresh_tokens (id, user_id, device_id, token)"
        " VALUES (1, %s, 'D1', 'r1'), (2, %s, 'D2', 'r2')",
        (ALICE, BOB),
    )
    cursor.execute(
        "INSERT INTO access_tokens (id, user_id, device_id, token, refresh_token_id)"
        " VALUES (1, %s, 'D1', 't1', 1), (2, %s, NULL, 't2', NULL), (3, %s, 'D2', 't3', 2)",
        (ALICE, ALICE, BOB),
    )
    cursor.execute("INSERT INTO devices (user_id, device_id) VALUES (%s, 'D1')", (ALICE,))
    cursor.execute(
        "INSERT INTO pushers (id, user_name, access_token, profile_tag, kind, app_id,"
        " app_display_name, device_display_name, pushkey, ts) VALUES"
        " (1, %s, 1, '', 'http', 'im.app', 'App', 'phone', 'p1', 1),"
        " (2, %s, NULL, '', 'email', 'm.email', 'App', 'phone', 'm1', 1),"
        " (3, %s, 3, '', 'http', 'im.app', 'App', 'phone', 'p3', 1)",
        (ALICE, ALICE, BOB),
    )
    connection.commit()
    connection.close()


def without_pool(args: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in args.items() if not key.startswith("cp_")}


def test_reset_password_offline_on_postgresql_with_synapse_schema_works(
    postgresql: dict[str, Any],
) -> None:
    config = {"database": {"name": "psycopg2", "args": postgresql}}
    assert reset_password_offline(config, ALICE, NEW_HASH) == ResetCounts(2, 1)
    with pytest.raises(MatrixStackError, match="^no user @x:y on this server$"):
        reset_password_offline(config, "@x:y", NEW_HASH)
    psycopg2 = importlib.import_module("psycopg2")
    connection = psycopg2.connect(**without_pool(postgresql))
    cursor = connection.cursor()
    found = {}
    for table, columns in [
        ("users", "name, password_hash"),
        ("access_tokens", "user_id, token"),
        ("refresh_tokens", "user_id, token"),
        ("devices", "user_id, device_id"),
        ("pushers", "user_name, pushkey"),
    ]:
        cursor.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2")
        found[table] = cursor.fetchall()
    connection.close()
    assert found == {
        "users": [(ALICE, NEW_HASH), (BOB, "old")],
        "access_tokens": [(BOB, "t3")],
        "refresh_tokens": [(BOB, "r2")],
        "devices": [(ALICE, "D1")],
        "pushers": [(ALICE, "m1"), (BOB, "p3")],
    }


# ---------------------------------------------------------------------------------------------
# matrix-stack-admin passwd --offline
# ---------------------------------------------------------------------------------------------


def test_passwd_offline_says_in_one_line_how_many_sessions_and_pushers_ended(
    sqlite_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homeserver = sqlite_root / "etc/matrix-synapse/homeserver.yaml"
    homeserver.parent.mkdir(parents=True)
    homeserver.write_text("bcrypt_rounds: 4\n", encoding="utf-8")
    password_file = tmp_path / "password"
    password_file.write_text("a new password\n", encoding="utf-8")

    assert _passwd_offline(ALICE, str(password_file), False, root=sqlite_root) == 0

    assert capsys.readouterr().out == (
        f"password of {ALICE} changed offline; 3 session(s) ended, 2 pusher(s) removed\n"
        "start Synapse again: systemctl start matrix-synapse\n"
    )
