"""postgres: Synapse's role and database, created once; a switch that would lose data refused."""

from __future__ import annotations

import pwd
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from matrix_stack.base.errors import CommandError, MatrixStackError
from matrix_stack.core import postgres
from matrix_stack.core.settings import Settings, from_mapping

NAME = "matrix.example.org"
SQLITE = Path("var/lib/matrix-synapse/homeserver.db")
LIVE = Path("etc/matrix-synapse/conf.d/50-matrix-stack.yaml")


class FakePsql:
    """psql answering from a set of existing objects, recording every statement."""

    def __init__(
        self, *, role: bool = False, database: bool = False, up: bool = True,
        schema: bool = True, data: bool = False,
    ) -> None:
        self.role, self.database, self.up = role, database, up
        self.schema, self.data = schema, data
        self.statements: list[str] = []

    def __call__(self, argv: Sequence[str]) -> str:
        if not self.up:
            raise CommandError("psql: error: connection to server failed")
        sql = argv[-1]
        self.statements.append(sql)
        if "pg_roles" in sql:
            return "1\n" if self.role else ""
        if "pg_database" in sql:
            return "1\n" if self.database else ""
        if "table_name IN" in sql:
            return "3\n" if self.schema else "0\n"
        if "EXISTS (SELECT 1 FROM users)" in sql:
            return "1\n" if self.data else "0\n"
        return "1\n"


def settings(database: str) -> Settings:
    return from_mapping({"server_name": NAME, "database": database}, Path("/"))


def test_prepare_creates_the_role_then_the_database_synapse_requires(tmp_path: Path) -> None:
    psql = FakePsql()

    done = postgres.prepare(settings("postgresql"), tmp_path, psql)

    assert done == [
        "created PostgreSQL role matrix-synapse",
        "created PostgreSQL database matrix_synapse",
    ]
    assert psql.statements[-3:] == [
        'CREATE ROLE "matrix-synapse" LOGIN',
        "SELECT 1 FROM pg_database WHERE datname = 'matrix_synapse'",
        "CREATE DATABASE matrix_synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
        'TEMPLATE template0 OWNER "matrix-synapse"',
    ]


def test_prepare_with_role_and_database_present_creates_nothing(tmp_path: Path) -> None:
    psql = FakePsql(role=True, database=True)

    assert postgres.prepare(settings("postgresql"), tmp_path, psql) == []
    assert not [sql for sql in psql.statements if sql.startswith("CREATE")]


def test_prepare_with_sqlite_asks_nothing_of_postgresql(tmp_path: Path) -> None:
    psql = FakePsql(up=False)

    assert postgres.prepare(settings("sqlite"), tmp_path, psql) == []


def test_prepare_without_a_running_server_raises_one_line(tmp_path: Path) -> None:
    with pytest.raises(MatrixStackError) as caught:
        postgres.prepare(settings("postgresql"), tmp_path, FakePsql(up=False))

    assert str(caught.value) == (
        "database is postgresql but no PostgreSQL server runs on this host: install and "
        "start it (apt install postgresql), or answer sqlite"
    )


def test_prepare_refuses_switching_a_sqlite_synapse_with_data(tmp_path: Path) -> None:
    (tmp_path / SQLITE).parent.mkdir(parents=True)
    (tmp_path / SQLITE).write_bytes(b"SQLite format 3\0")
    psql = FakePsql()

    with pytest.raises(MatrixStackError, match="use: matrix-stack-admin db migrate-to-postgresql"):
        postgres.prepare(settings("postgresql"), tmp_path, psql)
    assert psql.statements == []


def test_prepare_keeps_a_synapse_already_on_postgresql_beside_its_old_sqlite(
    tmp_path: Path,
) -> None:
    (tmp_path / SQLITE).parent.mkdir(parents=True)
    (tmp_path / SQLITE).write_bytes(b"SQLite format 3\0")
    (tmp_path / LIVE).parent.mkdir(parents=True)
    (tmp_path / LIVE).write_text(yaml.safe_dump({"database": postgres.SYNAPSE_DATABASE_BLOCK}))

    psql = FakePsql(role=True, database=True)

    assert postgres.prepare(settings("postgresql"), tmp_path, psql) == []


def test_psql_as_postgres_runs_psql_as_the_postgres_user_without_a_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []

    class Done:
        stdout = "1\n"

    def fake_run(argv: Sequence[str], **options: object) -> Done:
        seen.append([f"user={options.get('user')}", *argv])
        return Done()

    monkeypatch.setattr(postgres, "run", fake_run)

    assert postgres.query("SELECT 1") == "1"
    assert seen == [
        ["user=postgres", "psql", "-XAtq", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
         "SELECT 1"]
    ]


def synapse_sqlite(path: Path, users: int = 0) -> None:
    """Make a SQLite file with the tables Synapse's data lives in, and users rows."""
    import sqlite3
    from contextlib import closing

    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        for table in postgres.DATA_TABLES:
            connection.execute(f"CREATE TABLE {table} (name TEXT)")
        connection.executemany("INSERT INTO users VALUES (?)", [(f"u{n}",) for n in range(users)])
        connection.commit()


def test_prepare_sets_aside_an_empty_sqlite_synapse_made_on_its_first_start(
    tmp_path: Path,
) -> None:
    synapse_sqlite(tmp_path / SQLITE)
    (tmp_path / f"{SQLITE}-wal").write_bytes(b"")
    stopped: list[bool] = []

    done = postgres.prepare(settings("postgresql"), tmp_path, FakePsql(role=True, database=True),
                            stop=lambda: stopped.append(True))

    assert stopped == [True]
    assert not (tmp_path / SQLITE).exists()
    kept = sorted(p.name for p in (tmp_path / SQLITE).parent.iterdir())
    assert len(kept) == 2 and kept[0].startswith("homeserver.db.unused-")
    assert kept[1] == kept[0] + "-wal"
    assert done == [
        "set aside Synapse's unused SQLite database (no users, rooms or events; made when "
        f"Synapse first started) as {(tmp_path / SQLITE).parent / kept[0]}: PostgreSQL starts "
        "empty; nothing was deleted"
    ]


def test_prepare_refuses_a_sqlite_synapse_with_one_user_and_stops_nothing(tmp_path: Path) -> None:
    synapse_sqlite(tmp_path / SQLITE, users=1)
    stopped: list[bool] = []

    with pytest.raises(MatrixStackError, match="Synapse's data is in"):
        postgres.prepare(settings("postgresql"), tmp_path, FakePsql(),
                         stop=lambda: stopped.append(True))
    assert stopped == []
    assert (tmp_path / SQLITE).exists()


def test_sqlite_without_synapse_tables_counts_as_data(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.db"
    path.write_bytes(b"not a database at all")

    assert postgres.sqlite_holds_data(path)


# --- back from PostgreSQL to SQLite: no tool copies that way -------------------------------


def live_postgresql(root: Path, block: dict[str, object] = postgres.SYNAPSE_DATABASE_BLOCK) -> None:
    """Write our live Synapse file naming PostgreSQL, as apply leaves it after a switch."""
    (root / LIVE).parent.mkdir(parents=True, exist_ok=True)
    (root / LIVE).write_text(yaml.safe_dump({"database": block}))


def test_prepare_refuses_going_back_to_sqlite_while_local_postgresql_holds_users(
    tmp_path: Path,
) -> None:
    live_postgresql(tmp_path)
    synapse_sqlite(tmp_path / SQLITE, users=1)  # left behind by an old migration

    with pytest.raises(MatrixStackError) as caught:
        postgres.prepare(settings("sqlite"), tmp_path, FakePsql(database=True, data=True))

    assert str(caught.value) == (
        "database: Synapse's data is in PostgreSQL database matrix_synapse; matrix-stack has "
        "no way back to SQLite (Synapse's synapse_port_db copies only from SQLite to "
        "PostgreSQL): keep database: postgresql"
    )


def test_prepare_refuses_going_back_to_sqlite_from_a_remote_postgresql_without_asking_it(
    tmp_path: Path,
) -> None:
    live_postgresql(tmp_path, postgres.synapse_database_block(from_mapping(
        {"server_name": NAME, "database": "postgresql", "database_host": "db.example.org",
         "database_name": "synapse"}, Path("/"))))
    psql = FakePsql(up=False)

    with pytest.raises(MatrixStackError, match=(
        r"^database: Synapse's data is in PostgreSQL database synapse on db\.example\.org:5432; "
        "matrix-stack has no way back to SQLite")):
        postgres.prepare(settings("sqlite"), tmp_path, psql)


def test_prepare_refuses_going_back_to_sqlite_when_local_postgresql_cannot_be_asked(
    tmp_path: Path,
) -> None:
    live_postgresql(tmp_path)

    with pytest.raises(MatrixStackError, match="no way back to SQLite"):
        postgres.prepare(settings("sqlite"), tmp_path, FakePsql(up=False))


@pytest.mark.parametrize("psql", [
    FakePsql(database=False), FakePsql(database=True, schema=False), FakePsql(database=True)
], ids=["no-database", "no-schema", "no-rows"])
def test_prepare_lets_a_synapse_whose_postgresql_holds_nothing_go_back_to_sqlite(
    tmp_path: Path, psql: FakePsql
) -> None:
    live_postgresql(tmp_path)

    assert postgres.prepare(settings("sqlite"), tmp_path, psql) == []
    assert not [sql for sql in psql.statements if not sql.startswith("SELECT")]


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.skipif(_has_user("postgres"), reason="this host has a postgres account")
def test_check_server_without_postgresql_installed_says_none_runs() -> None:
    # No postgres account at all: psql is not even run, and the reason is the same one line.
    with pytest.raises(MatrixStackError, match="no PostgreSQL server runs on this host"):
        postgres.check_server()
