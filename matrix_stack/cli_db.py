"""matrix-stack-admin db migrate-to-postgresql: move Synapse's data off SQLite."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any) -> None:
    """Register the db command and its actions on the top-level subparsers."""
    db = commands.add_parser(
        "db",
        help="Synapse's database: move it from SQLite to PostgreSQL",
        description="Synapse's database, SQLite or PostgreSQL on this host (the question "
        "matrix-stack/database).",
    )
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    migrate = actions.add_parser(
        "migrate-to-postgresql",
        help="copy Synapse's SQLite data into PostgreSQL on this host and switch to it",
        description="Move Synapse's data from SQLite to the PostgreSQL server on this host. "
        "First check that PostgreSQL runs, that its database matrix_synapse (created with the "
        "role matrix-synapse when missing) is empty, and that its disk has twice the SQLite "
        "file's size free; then stop Synapse, copy the data with Synapse's own synapse_port_db "
        "(Debian's /usr/bin/synapse_port_db, else the matrix.org package's "
        "/opt/venvs/matrix-synapse/bin/synapse_port_db) as the user matrix-synapse, check that "
        "PostgreSQL holds as many users and rooms as SQLite, set database: postgresql in "
        "stack.yaml, apply, start Synapse and count again. One progress line per step.",
        epilog="On any failure, stack.yaml and the SQLite configuration are put back and "
        "Synapse is started on SQLite again; empty the PostgreSQL database before trying "
        "again. The SQLite file /var/lib/matrix-synapse/homeserver.db is kept. Answering "
        "postgresql to matrix-stack/database while that file holds data is refused, because "
        "Synapse would start from an empty database: this command is the way. matrix-stack "
        "never drops Synapse's database.",
    )
    migrate.set_defaults(handler=run_migrate)


def run_migrate(arguments: argparse.Namespace) -> int:
    from matrix_stack.apply import ensure_root
    from matrix_stack.db_migrate import migrate

    ensure_root()
    counts = migrate(lambda line: print(line, flush=True))
    print(f"Synapse runs on PostgreSQL with {counts}; the SQLite file is kept")
    return 0
