"""How many users and rooms Synapse's database holds: the check that a copy is complete.

Used by the migration (before and after synapse_port_db) and by backup and restore (the
archive's copy, the staged copy, the restored database).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.core import postgres

COUNTED_TABLES = ("users", "rooms")


@dataclass(frozen=True)
class Counts:
    """How many users and rooms a database holds."""

    users: int
    rooms: int

    def __str__(self) -> str:
        return f"{self.users} users, {self.rooms} rooms"


def count_sqlite(path: Path, *, copy: bool = False) -> Counts:
    """Return the users and rooms in a SQLite database, opened read-only.

    A copy nobody writes is opened immutable, so no -wal or -shm file is left beside it.
    """
    options = "mode=ro&immutable=1" if copy else "mode=ro"
    try:
        with closing(sqlite3.connect(f"file:{path}?{options}", uri=True)) as connection:
            values = [
                int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in COUNTED_TABLES
            ]
    except sqlite3.Error as error:
        raise MatrixStackError(f"cannot count users and rooms in {path}: {error}") from None
    return Counts(*values)


def count_postgresql(
    runner: postgres.Runner = postgres.psql_as_postgres, database: str = postgres.DATABASE
) -> Counts:
    """Return the users and rooms in a PostgreSQL database on this host."""
    values = [
        int(postgres.query(f"SELECT count(*) FROM {table}", runner, database))
        for table in COUNTED_TABLES
    ]
    return Counts(*values)
