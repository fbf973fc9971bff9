"""matrix-stack-admin restore ARCHIVE: put a backup back, or change nothing."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any


def add_commands(commands: Any) -> None:
    """Register the restore command on the top-level subparsers."""
    from pathlib import Path

    restore = commands.add_parser(
        "restore",
        help="put a backup archive back (same server name only)",
        description="Check every checksum of ARCHIVE and that it comes from this server name "
        "before anything is stopped; unpack it beside the live data; then stop Synapse, swap "
        "the database, media, signing key and matrix-stack's configuration in, apply, start "
        "Synapse and check the users and rooms counts. Any failure puts the previous data back "
        "and starts Synapse on it. The data it replaced is kept and named at the end. "
        "Debian's own homeserver.yaml and log.yaml are kept as installed.",
    )
    restore.add_argument("archive", metavar="ARCHIVE", type=Path, help="the backup to restore")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.set_defaults(handler=run_restore)


def run_restore(arguments: argparse.Namespace) -> int:
    import time

    from matrix_stack.base.errors import MatrixStackError, ensure_root
    from matrix_stack.cli.backup import progress
    from matrix_stack.cli.user_args import confirm
    from matrix_stack.features.data import backup, restore

    ensure_root()
    archive = arguments.archive.absolute()
    if not archive.is_file():
        raise MatrixStackError(f"{archive} does not exist")
    if not arguments.yes and not confirm(
        f"Restore {archive}? Synapse stops for the swap; the data it replaces is kept."
    ):
        print("nothing done")
        return 1
    with backup.exclusive_lock():
        started = time.monotonic()
        manifest, kept = restore.restore(archive, progress)
    print(f"restored the {manifest.created} backup of {manifest.server_name} in "
          f"{time.monotonic() - started:.1f} s; Synapse runs on it")
    for item in kept:
        print(f"kept: {item}")
    return 0
