"""Synapse's PostgreSQL role and database on this host, reached by peer authentication."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from matrix_stack import files
from matrix_stack.errors import CommandError, MatrixStackError
from matrix_stack.host import synapse_has_database
from matrix_stack.render import SYNAPSE_CONF_PATH
from matrix_stack.run import run
from matrix_stack.settings import DatabaseMode, Settings

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
# Synapse refuses any other encoding or collation (synapse/storage/engines/postgres.py).
CREATE_DATABASE = (
    f"CREATE DATABASE {DATABASE} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
    f'TEMPLATE template0 OWNER "{ROLE}"'
)
MIGRATE_HINT = "use: matrix-stack-admin db migrate-to-postgresql"

Runner = Callable[[Sequence[str]], str]


def psql_as_postgres(argv: Sequence[str]) -> str:
    """Run psql as the postgres superuser over the local socket; return its output."""
    return run(["runuser", "-u", "postgres", "--", "psql", "-XAtq", *argv], timeout=60).stdout


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


def ensure_database(runner: Runner = psql_as_postgres) -> list[str]:
    """Create Synapse's role and database unless they exist; return what was done."""
    done = []
    if query(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'", runner) != "1":
        query(f'CREATE ROLE "{ROLE}" LOGIN', runner)
        done.append(f"created PostgreSQL role {ROLE}")
    if query(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", runner) != "1":
        query(CREATE_DATABASE, runner)
        done.append(f"created PostgreSQL database {DATABASE}")
    return done


def database_is_empty(runner: Runner = psql_as_postgres) -> bool:
    """Return whether Synapse's PostgreSQL database has no tables yet."""
    count = query(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        runner,
        DATABASE,
    )
    return count == "0"


def live_engine(root: Path = Path("/")) -> str | None:
    """Return the database engine named in our live Synapse file, or None if it names none."""
    try:
        text = files.host_path(SYNAPSE_CONF_PATH, root).read_text(encoding="utf-8")
        config = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return None
    block = config.get("database") if isinstance(config, dict) else None
    name = block.get("name") if isinstance(block, dict) else None
    return str(name) if name else None


def check_switch(settings: Settings, root: Path = Path("/")) -> None:
    """Refuse moving a Synapse that has SQLite data onto an empty PostgreSQL database."""
    if settings.database is not DatabaseMode.POSTGRESQL or live_engine(root) == "psycopg2":
        return
    sqlite = synapse_has_database(root)
    if sqlite is not None:
        raise MatrixStackError(
            f"database: Synapse's data is in {sqlite}; switching to postgresql would start "
            f"from an empty database: {MIGRATE_HINT}"
        )


def prepare(
    settings: Settings, root: Path = Path("/"), runner: Runner = psql_as_postgres
) -> list[str]:
    """Check the switch is safe and PostgreSQL runs, then ensure the role and the database."""
    if settings.database is not DatabaseMode.POSTGRESQL:
        return []
    check_switch(settings, root)
    check_server(runner)
    return ensure_database(runner)
