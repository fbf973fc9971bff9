"""Reset a password in Synapse's database directly, for when Synapse is stopped.

This mirrors what Synapse's SetPasswordHandler does through its storage layer: set
``users.password_hash``, then ``user_delete_access_tokens`` (access tokens, then refresh
tokens), then remove the pushers of those sessions (``remove_pushers_by_access_tokens``), in
one transaction. Devices and end-to-end keys stay: deleting them here would skip the
device-list updates Synapse sends to other servers when it deletes a device itself.
"""

from __future__ import annotations

import enum
import importlib
import os
import pwd
import sqlite3
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import host_path
from matrix_stack.base.paths import DEFAULT_SQLITE_PATH
from matrix_stack.base.paths import SYNAPSE_DATA_DIR as SYNAPSE_WORKING_DIRECTORY

# Debian's unit runs Synapse in this directory, so relative SQLite paths are relative to it.
# Seconds to wait for a lock held by another connection (SQLite's busy timeout).
SQLITE_TIMEOUT = 10.0


class Engine(enum.StrEnum):
    SQLITE = "sqlite3"
    POSTGRESQL = "psycopg2"


@dataclass(frozen=True)
class ResetStatements:
    """The statements of an offline password reset in one SQL dialect, run in this order."""

    update_password: str
    delete_access_tokens: str
    delete_refresh_tokens: str
    delete_pushers: str


@dataclass(frozen=True)
class ResetCounts:
    """What an offline reset ended: access tokens (sessions) and pushers deleted."""

    access_tokens: int
    pushers: int



# Access tokens go first: access_tokens.refresh_token_id cascades from refresh_tokens, and
# Synapse deletes in this order too (storage/databases/main/registration.py). A pusher made
# through a session keeps pushing to its phone until removed (pushers.access_token holds an
# access_tokens.id): once every token of the user is gone, every such pusher goes, including
# those of tokens refreshed away earlier, whose devices Synapse's own reset deletes. Pushers
# made without a session (email notifications) stay, as in Synapse. deleted_pushers, the
# replication stream of those deletions, is left alone: Synapse starts from the pushers table.
SQLITE_RESET = ResetStatements(
    update_password="UPDATE users SET password_hash = ? WHERE name = ?",
    delete_access_tokens="DELETE FROM access_tokens WHERE user_id = ?",
    delete_refresh_tokens="DELETE FROM refresh_tokens WHERE user_id = ?",
    delete_pushers="DELETE FROM pushers WHERE user_name = ? AND access_token IS NOT NULL",
)
POSTGRESQL_RESET = ResetStatements(
    update_password="UPDATE users SET password_hash = %s WHERE name = %s",
    delete_access_tokens="DELETE FROM access_tokens WHERE user_id = %s",
    delete_refresh_tokens="DELETE FROM refresh_tokens WHERE user_id = %s",
    delete_pushers="DELETE FROM pushers WHERE user_name = %s AND access_token IS NOT NULL",
)
RESET_STATEMENTS: Mapping[Engine, ResetStatements] = MappingProxyType(
    {Engine.SQLITE: SQLITE_RESET, Engine.POSTGRESQL: POSTGRESQL_RESET}
)


@dataclass(frozen=True)
class Database:
    """Where Synapse keeps its main data store: a SQLite file, or psycopg2 connection arguments."""

    engine: Engine
    sqlite_path: Path | None = None
    # psycopg2.connect keywords; they hold the database password, so they stay out of repr.
    connect_args: Mapping[str, Any] = field(default_factory=dict, repr=False)


class Cursor(Protocol):
    """The part of a DB-API cursor the reset uses (sqlite3 and psycopg2 alike)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, parameters: Sequence[str], /) -> object: ...


def main_database_block(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the database block holding Synapse's main store, or None if none is configured."""
    single = config.get("database")
    several = config.get("databases")
    if single and several:
        raise MatrixStackError(
            "Synapse's configuration has both database and databases; Synapse refuses that too"
        )
    if several:
        if not isinstance(several, Mapping):
            raise MatrixStackError("databases in Synapse's configuration is not a mapping")
        for block in several.values():
            if not isinstance(block, Mapping):
                continue
            stores = block.get("data_stores")
            # Synapse's default: one database holds both stores (DatabaseConnectionConfig).
            if "main" in (["main", "state"] if stores is None else stores):
                return block
        raise MatrixStackError("no entry of databases in Synapse's configuration holds main")
    if single:
        if not isinstance(single, Mapping):
            raise MatrixStackError("database in Synapse's configuration is not a mapping")
        return single
    return None


def sqlite_path(value: object) -> Path:
    """Return a configured SQLite path as an absolute path on the target system."""
    if not isinstance(value, str) or not value:
        raise MatrixStackError("database.args.database in Synapse's configuration is not set")
    if value == ":memory:":
        raise MatrixStackError(f"Synapse's SQLite database {value} is not a file to update")
    return SYNAPSE_WORKING_DIRECTORY / value  # an absolute value replaces the directory


def parse_database(config: Mapping[str, Any]) -> Database:
    """Return where the merged Synapse config keeps the main store (synapse/config/database.py)."""
    block = main_database_block(config)
    if block is None:
        legacy = config.get("database_path")
        return Database(Engine.SQLITE, sqlite_path(legacy) if legacy else DEFAULT_SQLITE_PATH)
    name = block.get("name", "sqlite3")
    args = block.get("args") or {}
    if not isinstance(args, Mapping):
        raise MatrixStackError("database.args in Synapse's configuration is not a mapping")
    if name == Engine.SQLITE:
        return Database(Engine.SQLITE, sqlite_path(args.get("database")))
    if name == Engine.POSTGRESQL:
        # Synapse's make_conn passes every argument but the connection pool's cp_* ones.
        connect_args = {
            str(key): value for key, value in args.items() if not str(key).startswith("cp_")
        }
        return Database(Engine.POSTGRESQL, connect_args=MappingProxyType(connect_args))
    raise MatrixStackError(f"Synapse's database type {name!r} is not sqlite3 or psycopg2")


def peer_user(connect_args: Mapping[str, object]) -> str | None:
    """Return the unix user to become for a peer-authenticated socket connection, if any."""
    host = str(connect_args.get("host") or "")
    user = connect_args.get("user")
    if os.geteuid() != 0 or not isinstance(user, str) or (host and not host.startswith("/")):
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    return user


def reset_in_transaction(
    cursor: Cursor, statements: ResetStatements, user_id: str, password_hash: str
) -> ResetCounts:
    """Run the reset statements on cursor; return how many tokens and pushers were deleted."""
    cursor.execute(statements.update_password, (password_hash, user_id))
    if cursor.rowcount == 0:
        raise MatrixStackError(f"no user {user_id} on this server")
    cursor.execute(statements.delete_access_tokens, (user_id,))
    access_tokens = cursor.rowcount
    cursor.execute(statements.delete_refresh_tokens, (user_id,))
    cursor.execute(statements.delete_pushers, (user_id,))
    return ResetCounts(access_tokens, cursor.rowcount)


def reset_password_sqlite(
    path: Path, shown: Path, user_id: str, password_hash: str, *, timeout: float = SQLITE_TIMEOUT
) -> ResetCounts:
    """Reset a password in the SQLite file at path (named shown in messages)."""
    # mode=rw: a wrong path fails instead of creating an empty database. The file's journal
    # mode is kept (Synapse's is WAL), and foreign keys are on, as Synapse has them.
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as error:
        raise MatrixStackError(f"cannot open Synapse's database {shown}: {error}") from None
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        # Take the write lock before reading anything, so the transaction cannot deadlock.
        connection.execute("BEGIN IMMEDIATE")
        try:
            deleted = reset_in_transaction(
                connection.cursor(), SQLITE_RESET, user_id, password_hash
            )
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            raise MatrixStackError(
                f"Synapse's database {shown} is locked; stop matrix-synapse and try again"
            ) from None
        raise MatrixStackError(f"cannot update Synapse's database {shown}: {error}") from None
    except sqlite3.Error as error:
        raise MatrixStackError(f"cannot update Synapse's database {shown}: {error}") from None
    finally:
        connection.close()
    return deleted


def reset_password_postgresql(
    connect_args: Mapping[str, Any], user_id: str, password_hash: str
) -> ResetCounts:
    """Reset a password in Synapse's PostgreSQL database through psycopg2."""
    try:
        psycopg2 = importlib.import_module("psycopg2")
    except ImportError:
        raise MatrixStackError(
            "Synapse uses PostgreSQL but python3-psycopg2 is not installed; install it"
        ) from None
    database = connect_args.get("dbname") or connect_args.get("database") or "PostgreSQL"
    try:
        connection = psycopg2.connect(**connect_args)
    except psycopg2.Error as error:
        raise MatrixStackError(
            f"cannot connect to Synapse's database {database}: {first_line(error)}"
        ) from None
    try:
        cursor = connection.cursor()
        try:
            deleted = reset_in_transaction(cursor, POSTGRESQL_RESET, user_id, password_hash)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
    except psycopg2.Error as error:
        raise MatrixStackError(
            f"cannot update Synapse's database {database}: {first_line(error)}"
        ) from None
    finally:
        connection.close()
    return deleted


def first_line(error: BaseException) -> str:
    """Return the first line of an error (psycopg2 adds DETAIL lines that may quote values)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def reset_password_offline(
    config: Mapping[str, Any], user_id: str, password_hash: str, root: Path = Path("/")
) -> ResetCounts:
    """Set user_id's password hash, end its sessions and their pushers; return the counts."""
    database = parse_database(config)
    if database.sqlite_path is not None:
        path = database.sqlite_path
        return reset_password_sqlite(host_path(path, root), path, user_id, password_hash)
    user = peer_user(dict(database.connect_args))
    if user is not None:
        # Peer authentication admits only the unix user named like the role (matrix-synapse).
        return reset_password_as(user, database.connect_args, user_id, password_hash)
    return reset_password_postgresql(database.connect_args, user_id, password_hash)


# Run as the role's unix user by reset_password_as: the request comes on stdin (the hash and
# any connection secret never on argv), the counts go back on stdout, an error as its last
# line on stderr.
_RESET_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.synapse.db import reset_password_postgresql
request = json.load(sys.stdin)
try:
    counts = reset_password_postgresql(request["connect"], request["user"], request["hash"])
except MatrixStackError as error:
    sys.exit(str(error))
print(json.dumps([counts.access_tokens, counts.pushers]))
"""


def reset_password_as(
    user: str, connect_args: Mapping[str, Any], user_id: str, password_hash: str
) -> ResetCounts:
    """Run reset_password_postgresql in a child process as the unix user user."""
    import json
    import sys

    from matrix_stack.base.run import last_line, run

    request = json.dumps({"connect": dict(connect_args), "user": user_id, "hash": password_hash})
    package_root = str(Path(__file__).resolve().parents[2])
    result = run([sys.executable, "-c", _RESET_CHILD, package_root], input_text=request,
                 user=user, timeout=120, check=False)
    if result.returncode != 0:
        # The child's own one-line error (or the last line of a crash) is the last line.
        raise MatrixStackError(last_line(result.stderr, [password_hash]))
    access_tokens, pushers = json.loads(result.stdout)
    return ResetCounts(access_tokens, pushers)
