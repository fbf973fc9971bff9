"""matrix-stack-admin db migrate-to-postgresql: move Synapse's data off SQLite."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any) -> None:
    """Register the db command and its actions on the top-level subparsers."""
    db = commands.add_parser("db", help="Synapse's database: move it from SQLite to PostgreSQL")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    migrate = actions.add_parser(
        "migrate-to-postgresql",
        help="copy Synapse's SQLite data into PostgreSQL on this host and switch to it",
        description="Check PostgreSQL runs here, its database matrix_synapse is empty and "
        "the disk has room; stop Synapse, copy the data with Synapse's synapse_port_db, set "
        "database: postgresql in stack.yaml, apply, start Synapse and check the users and "
        "rooms counts match. Any failure puts SQLite back and starts Synapse on it. The "
        "SQLite file is kept.",
    )
    migrate.set_defaults(handler=run_migrate)


def run_migrate(arguments: argparse.Namespace) -> int:
    from matrix_stack.apply import ensure_root
    from matrix_stack.db_migrate import migrate

    ensure_root()
    counts = migrate(lambda line: print(line, flush=True))
    print(f"Synapse runs on PostgreSQL with {counts}; the SQLite file is kept")
    return 0
