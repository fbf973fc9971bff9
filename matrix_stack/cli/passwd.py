"""matrix-stack-admin passwd: online through the admin API, or offline in the database."""

from __future__ import annotations

import argparse

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.cli.user_args import (
    NAME_HELP,
    PASSWORD_FILE_HELP,
    refuse_service_account,
    target_user,
)
from matrix_stack.cli.user_names import existing_user_argument

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def add_commands(commands: Any) -> None:
    """Register the passwd command on the top-level subparsers."""
    passwd = commands.add_parser(
        "passwd",
        help="set a user's password (online, or offline when Synapse is stopped)",
        description="Set a user's password. While Synapse runs this goes through its admin "
        "API and ends every session of the user unless --keep-sessions. When Synapse is "
        "stopped, or with --offline, Synapse's database is written directly (SQLite or "
        "PostgreSQL, as configured in homeserver.yaml and conf.d/), hashing the password "
        "exactly as Synapse does (NFKC normalisation, pepper, bcrypt rounds); the user's "
        "sessions end too.",
    )
    existing_user_argument(passwd, NAME_HELP)
    passwd.add_argument("--password-file", metavar="F", help=PASSWORD_FILE_HELP)
    passwd.add_argument(
        "--keep-sessions", action="store_true", help="keep the user's sessions (online only)"
    )
    passwd.add_argument(
        "--offline", action="store_true",
        help="write the database directly; refused while Synapse runs",
    )
    passwd.add_argument(
        "--force",
        action="store_true",
        help="with --offline, write the database even though Synapse runs (restart it after)",
    )
    passwd.set_defaults(handler=run_passwd)


def _synapse_state() -> tuple[bool, bool, str]:
    """Return whether Synapse's main process runs, whether any of its processes does (a
    worker's caches would keep ended sessions alive), and the unit that stops and starts them
    all: the target once workers are in the layout."""
    from matrix_stack.base.run import run
    from matrix_stack.core.services import SYNAPSE_TARGET, worker_units

    workers = worker_units()
    units = ["matrix-synapse.service", *(f"{unit}.service" for unit in workers)]
    states = run(["systemctl", "is-active", *units], check=False).stdout.split()
    return (states[:1] == ["active"], "active" in states,
            SYNAPSE_TARGET if workers else "matrix-synapse")


def run_passwd(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.synapse.api import Synapse, admin_session
    from matrix_stack.synapse.passwords import read_new_password

    ensure_root()
    user = target_user(arguments.name)
    refuse_service_account(user)
    main_running, running, unit = _synapse_state()
    offline = arguments.offline or not main_running
    if arguments.force and not arguments.offline:
        raise MatrixStackError("--force only goes with --offline")
    if offline and arguments.keep_sessions:
        raise MatrixStackError("--keep-sessions only works online: offline ends every session")
    if offline and running and not arguments.force:
        if not arguments.offline:  # the admin API is the main process's
            raise MatrixStackError(
                f"Synapse's workers run without its main process: stop them too (systemctl "
                f"stop {unit}), or start it again to change the password through Synapse"
            )
        raise MatrixStackError(
            f"Synapse is running: stop it first (systemctl stop {unit}), or drop "
            "--offline to change the password through Synapse"
        )
    if not offline:
        synapse = admin_session(user.server_name)
        synapse.user(user)
        password = read_new_password(arguments.password_file)
        synapse.reset_password(user, password, logout_devices=not arguments.keep_sessions)
        ended = "sessions kept" if arguments.keep_sessions else "every session ended"
        print(f"password of {user} changed; {ended}")
        return 0
    if not arguments.offline and Synapse().answers():
        raise MatrixStackError("Synapse answers although its unit is stopped; use --offline")
    return _passwd_offline(user, arguments.password_file, running, unit=unit)


def _passwd_offline(
    user: Any, password_file: str | None, running: bool, root: Path | None = None,
    unit: str = "matrix-synapse",
) -> int:
    from pathlib import Path

    from matrix_stack.synapse.config import read_merged_config
    from matrix_stack.synapse.db import reset_password_offline
    from matrix_stack.synapse.passwords import hash_password, password_settings, read_new_password

    root = root or Path("/")
    config = read_merged_config(root)
    settings = password_settings(config)
    password = read_new_password(password_file)
    ended = reset_password_offline(config, str(user), hash_password(password, settings), root)
    print(
        f"password of {user} changed offline; {ended.access_tokens} session(s) ended, "
        f"{ended.pushers} pusher(s) removed"
    )
    if running:
        print(f"Synapse ran meanwhile: restart it now (systemctl restart {unit})")
    else:
        print(f"start Synapse again: systemctl start {unit}")
    return 0

