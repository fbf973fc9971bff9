"""Keep Synapse's server name and ours the same, and refuse to change it once it is in use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import FileSpec, host_path, write_atomic
from matrix_stack.base.paths import SERVER_NAME_PATH
from matrix_stack.core import postgres
from matrix_stack.core.host import synapse_has_database
from matrix_stack.core.settings import Settings


def synapse_server_name(root: Path = Path("/")) -> str | None:
    """Return the server name Synapse is configured with, if any."""
    try:
        content = yaml.safe_load(host_path(SERVER_NAME_PATH, root).read_text(encoding="utf-8"))
    except (FileNotFoundError, yaml.YAMLError):
        return None
    if isinstance(content, dict) and content.get("server_name"):
        return str(content["server_name"]).strip().lower()
    return None


def database_in_use(
    settings: Settings, name: str, root: Path, runner: postgres.Runner
) -> str | None:
    """Return the database Synapse uses if it holds data (of server name), else None.

    The live engine decides: on PostgreSQL an old SQLite file left beside is not Synapse's.
    """
    if postgres.live_engine(root) != "psycopg2":
        sqlite = synapse_has_database(root)
        return None if sqlite is None else str(sqlite)
    database = postgres.describe(settings)
    try:
        holds_data = postgres.postgresql_holds_data(settings, runner)
    except MatrixStackError as error:
        raise MatrixStackError(
            f"cannot tell whether {database} holds users and rooms of {name} ({error}): "
            "start PostgreSQL and try again"
        ) from None
    return database if holds_data else None


def ensure_server_name(
    settings: Settings,
    root: Path = Path("/"),
    set_synapse_answer: Callable[[str], None] | None = None,
    runner: postgres.Runner = postgres.psql_as_postgres,
) -> bool:
    """Make Synapse use settings.server_name; return whether server_name.yaml was written."""
    if not server_name_changes(settings, root, runner):
        return False
    write_server_name(settings, root, set_synapse_answer)
    return True


def server_name_changes(
    settings: Settings, root: Path = Path("/"), runner: postgres.Runner = postgres.psql_as_postgres
) -> bool:
    """Return whether server_name.yaml must change to settings.server_name; raise if it cannot.

    When Synapse's database (SQLite or PostgreSQL, whichever it uses) already holds data the
    name is part of every user and room ID and of its signing key's identity, so a different
    name is refused.
    """
    current = synapse_server_name(root)
    if current == settings.server_name:
        return False
    database = None if current is None else database_in_use(settings, current, root, runner)
    if database is not None:
        raise MatrixStackError(
            f"the server name cannot change from {current} to {settings.server_name}: Synapse's "
            f"database {database} holds users and rooms of {current}; keep {current}, or "
            "start afresh by moving that database away"
        )
    return True


def write_server_name(
    settings: Settings,
    root: Path = Path("/"),
    set_synapse_answer: Callable[[str], None] | None = None,
) -> None:
    """Write server_name.yaml as matrix-synapse's postinst would.

    That postinst leaves the file out when its question was never answered (a noninteractive
    install); matrix-synapse/server-name is set first, so that its next run writes the same line.
    """
    if set_synapse_answer is not None:
        set_synapse_answer(settings.server_name)
    write_atomic(
        FileSpec(SERVER_NAME_PATH, f"server_name: {settings.server_name}\n", 0o644), root
    )
