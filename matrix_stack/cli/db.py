"""matrix-stack-admin db migrate-to-postgresql: move Synapse's data off SQLite."""

from __future__ import annotations

import argparse

from matrix_stack.base.errors import UsageError

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any


def add_commands(commands: Any) -> None:
    """Register the db command and its actions on the top-level subparsers."""
    db = commands.add_parser(
        "db",
        help="Synapse's database: move it from SQLite to PostgreSQL",
        description="Synapse's database, SQLite or PostgreSQL on this host or remote (the "
        "questions matrix-stack/database and matrix-stack/database-host).",
    )
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    migrate = actions.add_parser(
        "migrate-to-postgresql",
        help="copy Synapse's SQLite data into PostgreSQL on this host and switch to it",
        description="Move Synapse's data from SQLite to the PostgreSQL server on this host, "
        "or with --host to a remote one. First check that PostgreSQL runs, that the database "
        "(here matrix_synapse, created with the role matrix-synapse when missing; remote: "
        "made beforehand with UTF8 and C collation, owned by the role) is empty, and that "
        "the local disk has twice the SQLite file's size free; then stop Synapse, copy the "
        "data with Synapse's own synapse_port_db "
        "(Debian's /usr/bin/synapse_port_db, else the matrix.org package's "
        "/opt/venvs/matrix-synapse/bin/synapse_port_db) as the user matrix-synapse, check that "
        "PostgreSQL holds as many users and rooms as SQLite, set database: postgresql in "
        "stack.yaml, apply, start Synapse and count again. One progress line per step.",
        epilog="On any failure or interruption (Ctrl-C, SIGTERM), stack.yaml and the SQLite "
        "configuration are put back and Synapse is started on SQLite again; empty the "
        "PostgreSQL database before trying "
        "again. After a verified copy the SQLite file /var/lib/matrix-synapse/homeserver.db "
        "is renamed homeserver.db.migrated-STAMP beside itself (never deleted), and going "
        "back to sqlite is refused while PostgreSQL holds the data. Answering "
        "postgresql to matrix-stack/database while that file holds data is refused, because "
        "Synapse would start from an empty database: this command is the way. matrix-stack "
        "never drops Synapse's database.",
    )
    migrate.add_argument("--host", metavar="HOST",
                         help="a remote PostgreSQL server (default: this host's socket)")
    migrate.add_argument("--port", type=int, default=5432, metavar="PORT",
                         help="its port (default 5432)")
    migrate.add_argument("--name", default="matrix_synapse", metavar="DB",
                         help="its database (default matrix_synapse)")
    migrate.add_argument("--user", default="matrix_synapse", metavar="ROLE",
                         help="the role Synapse connects as (default matrix_synapse)")
    migrate.add_argument(
        "--password-file", metavar="F",
        help="read the role's password from F (- for standard input); it is kept in "
        "/etc/matrix-stack/secrets/database.pgpass for Synapse alone. Without it: the "
        "password stored before, else a prompt",
    )
    migrate.set_defaults(handler=run_migrate)


def remote_password(password_file: str | None) -> str | None:
    """Return the password given, or None to use the stored one (prompt when none is)."""
    import getpass
    import sys

    from matrix_stack.base import secrets
    from matrix_stack.synapse.passwords import read_password_file

    if password_file:
        return read_password_file(password_file, sys.stdin)
    if secrets.has_database_password():
        return None
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask the PostgreSQL password on: add --password-file")
    return getpass.getpass("PostgreSQL password: ")


def run_migrate(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.features.data.migrate import migrate

    ensure_root()
    remote = None
    password = None
    if arguments.host:
        remote = {"database_host": arguments.host, "database_port": arguments.port,
                  "database_name": arguments.name, "database_user": arguments.user}
        password = remote_password(arguments.password_file)
    elif arguments.password_file:
        raise UsageError("--password-file is for a remote server: add --host")
    counts = migrate(lambda line: print(line, flush=True), remote=remote, password=password)
    print(f"Synapse runs on PostgreSQL with {counts}")
    return 0
