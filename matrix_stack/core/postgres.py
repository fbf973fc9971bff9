"""Synapse's PostgreSQL role and database on this host, reached by peer authentication."""

from __future__ import annotations

import json
import os
import pwd
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from matrix_stack.base import files
from matrix_stack.base.errors import CommandError, MatrixStackError
from matrix_stack.base.paths import SYNAPSE_CONF_PATH
from matrix_stack.base.run import run, run_streaming
from matrix_stack.base.secrets import DATABASE_PASSFILE
from matrix_stack.core.host import synapse_has_database
from matrix_stack.core.settings import DatabaseMode, Settings

# Synapse runs as the unix user matrix-synapse, so peer authentication needs a role of that
# name; the database takes Synapse's documented name (docs/postgres.md).
ROLE = "matrix-synapse"
DATABASE = "matrix_synapse"
SOCKET_DIR = "/var/run/postgresql"
SYNAPSE_DATABASE_BLOCK: dict[str, Any] = {
    "name": "psycopg2",
    "args": {
        "user": ROLE,
        "database": DATABASE,
        "host": SOCKET_DIR,
        "cp_min": 5,
        "cp_max": 10,
    },
}


def create_database_sql(name: str = DATABASE) -> str:
    """Return CREATE DATABASE with what Synapse requires (synapse/storage/engines/postgres.py
    refuses any other encoding or collation)."""
    return (
        f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
        f'TEMPLATE template0 OWNER "{ROLE}"'
    )


CREATE_DATABASE = create_database_sql()
MIGRATE_HINT = "use: matrix-stack-admin db migrate-to-postgresql"

Runner = Callable[[Sequence[str]], str]


def psql_as_postgres(argv: Sequence[str]) -> str:
    """Run psql as the postgres superuser over the local socket; return its output."""
    return run(["psql", "-XAtq", *argv], user="postgres", timeout=60).stdout


def query(sql: str, runner: Runner = psql_as_postgres, database: str = "postgres") -> str:
    """Return the unaligned output of one SQL statement run in database."""
    return runner(["-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql]).strip()


def check_server(runner: Runner = psql_as_postgres) -> None:
    """Raise one line unless a PostgreSQL server answers on this host's socket."""
    try:
        query("SELECT 1", runner)
    except CommandError:
        raise MatrixStackError(
            "database is postgresql but no PostgreSQL server runs on this host: install and "
            "start it (apt install postgresql), or answer sqlite"
        ) from None


def ensure_role(runner: Runner = psql_as_postgres) -> list[str]:
    """Create Synapse's login role unless it exists; return what was done."""
    if query(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'", runner) == "1":
        return []
    query(f'CREATE ROLE "{ROLE}" LOGIN', runner)
    return [f"created PostgreSQL role {ROLE}"]


def ensure_database(runner: Runner = psql_as_postgres) -> list[str]:
    """Create Synapse's role and database unless they exist; return what was done."""
    done = ensure_role(runner)
    if query(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", runner) != "1":
        query(CREATE_DATABASE, runner)
        done.append(f"created PostgreSQL database {DATABASE}")
    return done


def database_exists(name: str, runner: Runner = psql_as_postgres) -> bool:
    return query(f"SELECT 1 FROM pg_database WHERE datname = '{name}'", runner) == "1"


def rename_database(old: str, new: str, runner: Runner = psql_as_postgres) -> None:
    query(f"ALTER DATABASE {old} RENAME TO {new}", runner)


def drop_database(name: str, runner: Runner = psql_as_postgres) -> None:
    query(f"DROP DATABASE IF EXISTS {name}", runner)


def restore_dump(dump: Path, name: str) -> None:
    """Create database name and load a pg_dump -Fc file into it, objects owned by ROLE."""
    drop_database(name)
    query(create_database_sql(name))
    try:
        with dump.open("rb") as stream:
            run_streaming(
                ["pg_restore", "--no-owner", "--no-privileges", f"--role={ROLE}",
                 "--single-transaction", "--exit-on-error", "-d", name],
                stdin=stream, user="postgres",
            )
    except CommandError:
        drop_database(name)
        raise


def database_is_empty(runner: Runner = psql_as_postgres) -> bool:
    """Return whether Synapse's PostgreSQL database has no tables yet."""
    count = query(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        runner,
        DATABASE,
    )
    return count == "0"


def live_database(root: Path = Path("/")) -> dict[str, Any]:
    """Return the database block of our live Synapse file, empty if it has none."""
    try:
        text = files.host_path(SYNAPSE_CONF_PATH, root).read_text(encoding="utf-8")
        config = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return {}
    block = config.get("database") if isinstance(config, dict) else None
    return block if isinstance(block, dict) else {}


def live_engine(root: Path = Path("/")) -> str | None:
    """Return the database engine named in our live Synapse file, or None if it names none."""
    name = live_database(root).get("name")
    return str(name) if name else None


def describe(settings: Settings) -> str:
    """Return the PostgreSQL database that settings name, as messages show it."""
    if not settings.remote_database:
        return f"PostgreSQL database {DATABASE}"
    return (f"PostgreSQL database {settings.database_name} on "
            f"{settings.database_host}:{settings.database_port}")


def describe_block(block: dict[str, Any]) -> tuple[str, bool]:
    """Return the PostgreSQL database a psycopg2 block of Synapse's names, as messages show it,
    and whether it is this host's (reached by its socket)."""
    arguments = block.get("args")
    arguments = arguments if isinstance(arguments, dict) else {}
    name = arguments.get("database") or arguments.get("dbname") or DATABASE
    host = str(arguments.get("host") or "")
    if not host or host.startswith("/"):
        return f"PostgreSQL database {name}", name == DATABASE
    return f"PostgreSQL database {name} on {host}:{arguments.get('port') or 5432}", False




# The tables that hold Synapse's data: a database with a row in none of them holds none.
DATA_TABLES = ("users", "rooms", "events")
SCHEMA_SQL = (
    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
    f"AND table_name IN ({', '.join(repr(table) for table in DATA_TABLES)})"
)
HOLDS_DATA_SQL = (
    "SELECT ("
    + " OR ".join(f"EXISTS (SELECT 1 FROM {table})" for table in DATA_TABLES)
    + ")::int"
)


def postgresql_holds_data(settings: Settings, runner: Runner = psql_as_postgres) -> bool:
    """Return whether Synapse's PostgreSQL database (settings') has any user, room or event.

    Missing database or schema: no data. Raise CommandError or MatrixStackError when the
    server cannot be asked.
    """
    if settings.remote_database:
        def ask(sql: str) -> str:
            return remote_query(settings, sql)[0][0]
    else:
        if not database_exists(DATABASE, runner):
            return False

        def ask(sql: str) -> str:
            return query(sql, runner, DATABASE)
    return ask(SCHEMA_SQL) != "0" and ask(HOLDS_DATA_SQL) != "0"


def check_back_to_sqlite(settings: Settings, root: Path, runner: Runner) -> None:
    """Refuse SQLite while the live Synapse uses a PostgreSQL database that may hold data.

    synapse_port_db copies only from SQLite, so SQLite would start from an empty (or an old,
    stale) database. A remote database is never asked: it counts as holding data.
    """
    block = live_database(root)
    if block.get("name") != "psycopg2":
        return
    where, local = describe_block(block)
    if local:  # cheap to ask
        try:
            if not postgresql_holds_data(settings, runner):
                return
        except MatrixStackError:
            pass  # what cannot be checked counts as data
    raise MatrixStackError(
        f"database: Synapse's data is in {where}; matrix-stack has no way back to SQLite "
        "(Synapse's synapse_port_db copies only from SQLite to PostgreSQL): keep database: "
        "postgresql"
    )


def check_switch(
    settings: Settings, root: Path = Path("/"), runner: Runner = psql_as_postgres
) -> Path | None:
    """Refuse a switch of database engine that would lose or hide Synapse's data.

    Return the SQLite database to set aside when it holds no users, rooms or events: the one
    Synapse creates on its first start, before matrix-stack is configured (matrix-synapse-py3's
    postinst starts it on SQLite).
    """
    if settings.database is DatabaseMode.SQLITE:
        check_back_to_sqlite(settings, root, runner)
        return None
    if live_engine(root) == "psycopg2":
        return None
    sqlite = synapse_has_database(root)
    if sqlite is None:
        return None
    if not sqlite_holds_data(files.host_path(sqlite, root)):
        return files.host_path(sqlite, root)
    raise MatrixStackError(
        f"database: Synapse's data is in {sqlite}; switching to postgresql would start "
        f"from an empty database: {MIGRATE_HINT}"
    )


# Run as Synapse's user, so that any -shm file SQLite makes beside a live database is
# Synapse's. Prints how many of the tables holding data have at least one row.
SQLITE_PROBE = """
import sqlite3, sys
connection = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
print(sum(connection.execute("SELECT EXISTS (SELECT 1 FROM %s)" % table).fetchone()[0]
          for table in sys.argv[2:]))
"""


def sqlite_holds_data(path: Path) -> bool:
    """Return whether Synapse's SQLite database has any user, room or event.

    Read as the file's owner (Synapse's user), so that whatever SQLite writes beside it stays
    Synapse's. Anything unreadable (no schema yet, not a database) counts as data: never set
    aside what could not be checked.
    """
    try:
        return int(probe_sqlite_as_owner(path, SQLITE_PROBE, *DATA_TABLES)) != 0
    except (CommandError, OSError, KeyError, ValueError):
        return True


def probe_sqlite_as_owner(path: Path, probe: str, *arguments: str) -> str:
    """Run a Python probe on a SQLite file as the file's owner; return what it printed.

    Whatever SQLite writes beside a live database (-shm) then stays its owner's. Raise
    CommandError when the probe fails, OSError or KeyError when the owner cannot be found.
    """
    owner = path.lstat().st_uid
    user = None if owner == os.geteuid() else pwd.getpwuid(owner).pw_name
    return run([sys.executable, "-c", probe, str(path), *arguments],
               user=user, timeout=60).stdout.strip()


def stop_synapse() -> None:
    from matrix_stack.core.services import synapse_unit

    synapse_unit("stop")


def set_aside(database: Path, suffix: str, stamp: str | None = None) -> Path:
    """Rename a SQLite database (and its -wal, -shm, -journal) to NAME.SUFFIX-STAMP beside it.

    rename() moves a planted link itself, never what it points to; nothing is deleted, and
    nothing is renamed over: return the new name of the database.
    """
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = database.with_name(f"{database.name}.{suffix}-{stamp}")
    moves = [
        (database.with_name(database.name + end), kept.with_name(kept.name + end))
        for end in ("", "-wal", "-shm", "-journal")
        if os.path.lexists(database.with_name(database.name + end))
    ]
    for _source, target in moves:
        if os.path.lexists(target):
            raise MatrixStackError(f"{target} exists already: move it away and try again")
    for source, target in moves:
        os.rename(source, target)
    return kept


def prepare(
    settings: Settings,
    root: Path = Path("/"),
    runner: Runner = psql_as_postgres,
    stop: Callable[[], None] = stop_synapse,
) -> list[str]:
    """Check the switch is safe and PostgreSQL runs, then ensure the role and the database."""
    unused = check_switch(settings, root, runner)
    if settings.database is not DatabaseMode.POSTGRESQL:
        return []
    if settings.remote_database:
        done = [check_remote(settings)]
    else:
        check_server(runner)
        done = ensure_database(runner)
    if unused is not None:
        stop()
        kept = set_aside(unused, "unused")
        done.append(
            f"set aside Synapse's unused SQLite database (no users, rooms or events; made when "
            f"Synapse first started) as {kept}: PostgreSQL starts empty; nothing was deleted"
        )
    return done


def synapse_database_block(settings: Settings) -> dict[str, Any]:
    """Return Synapse's database: block for PostgreSQL (the template renders the same)."""
    if not settings.remote_database:
        return SYNAPSE_DATABASE_BLOCK
    return {
        "name": "psycopg2",
        "args": {
            "host": settings.database_host,
            "port": settings.database_port,
            "database": settings.database_name,
            "user": settings.database_user,
            "passfile": str(DATABASE_PASSFILE),
            "cp_min": 5,
            "cp_max": 10,
        },
    }


# Run by Synapse's own Python as its user, so it connects exactly as Synapse will: the same
# psycopg2, the same passfile. Prints JSON: the rows, or the first line of the error.
REMOTE_PROBE = """
import json, sys
import psycopg2
arguments, statement = json.loads(sys.argv[1]), sys.argv[2]
try:
    with psycopg2.connect(connect_timeout=10, **arguments) as connection:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            rows = [[str(value) for value in row] for row in cursor.fetchall()]
    connection.close()
except psycopg2.Error as error:
    lines = str(error).strip().splitlines()
    print(json.dumps({"error": lines[0] if lines else type(error).__name__}))
else:
    print(json.dumps({"rows": rows}))
"""


def remote_query(
    settings: Settings, statement: str, passfile: Path = DATABASE_PASSFILE
) -> list[list[str]]:
    """Run one statement on the remote database as Synapse would connect; return its rows.

    passfile: the password file to connect with (a new password is checked in another one).
    """
    from matrix_stack.core.services import SYNAPSE_USER, synapse_python

    arguments = {
        "host": settings.database_host,
        "port": settings.database_port,
        "dbname": settings.database_name,
        "user": settings.database_user,
        "passfile": str(passfile),
    }
    where = (f"PostgreSQL database {settings.database_name} on "
             f"{settings.database_host}:{settings.database_port} as {settings.database_user}")
    try:
        output = run(
            [str(synapse_python()), "-c", REMOTE_PROBE, json.dumps(arguments), statement],
            user=SYNAPSE_USER, timeout=60,
        ).stdout
        answer = json.loads(output.strip().splitlines()[-1])
    except (CommandError, ValueError, IndexError) as error:
        raise MatrixStackError(f"cannot reach {where}: {error}") from None
    if "error" in answer:
        raise MatrixStackError(f"cannot use {where}: {answer['error']}")
    return [list(row) for row in answer["rows"]]


def check_remote(settings: Settings, passfile: Path = DATABASE_PASSFILE) -> str:
    """Raise one line unless the remote database answers with what Synapse requires."""
    rows = remote_query(
        settings,
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
        "WHERE datname = current_database()",
        passfile,
    )
    encoding, collate, ctype = rows[0]
    if encoding != "UTF8" or collate != "C" or ctype != "C":
        raise MatrixStackError(
            f"PostgreSQL database {settings.database_name} has encoding {encoding}, "
            f"LC_COLLATE {collate}, LC_CTYPE {ctype}; Synapse needs UTF8 and C: create it with "
            f"CREATE DATABASE {settings.database_name} ENCODING 'UTF8' LC_COLLATE 'C' "
            f"LC_CTYPE 'C' TEMPLATE template0 OWNER {settings.database_user}"
        )
    return (f"PostgreSQL database {settings.database_name} on {settings.database_host}:"
            f"{settings.database_port} answers (UTF8, C)")
