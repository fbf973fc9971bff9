"""postgres: Synapse's role and database, created once; a switch that would lose data refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from matrix_stack import postgres
from matrix_stack.errors import CommandError, MatrixStackError
from matrix_stack.settings import Settings, from_mapping

NAME = "matrix.example.org"
SQLITE = Path("var/lib/matrix-synapse/homeserver.db")
LIVE = Path("etc/matrix-synapse/conf.d/50-matrix-stack.yaml")


class FakePsql:
    """psql answering from a set of existing objects, recording every statement."""

    def __init__(self, *, role: bool = False, database: bool = False, up: bool = True) -> None:
        self.role, self.database, self.up = role, database, up
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

    def fake_run(argv: Sequence[str], **_: object) -> Done:
        seen.append(list(argv))
        return Done()

    monkeypatch.setattr(postgres, "run", fake_run)

    assert postgres.query("SELECT 1") == "1"
    assert seen == [
        ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "postgres", "-v",
         "ON_ERROR_STOP=1", "-c", "SELECT 1"]
    ]
