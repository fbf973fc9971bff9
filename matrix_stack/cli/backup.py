"""matrix-stack-admin backup [DIR]: one archive to rebuild this server from."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any


def add_commands(commands: Any) -> None:
    """Register the backup command on the top-level subparsers."""
    from pathlib import Path

    backup = commands.add_parser(
        "backup",
        help="write one archive with Synapse's database, media, signing key and configuration",
        description="Write DIR/matrix-stack-backup-SERVER-TIME.tar (root only, 0600) while "
        "Synapse keeps running: a consistent copy of the database (SQLite's online backup, "
        "or pg_dump -Fc), the signing key, the media store, the secrets, stack.yaml and the "
        "rendered configuration, and a manifest with a SHA-256 checksum of each. Element is "
        "not archived (matrix-stack-admin element fetch gets it again). A failed backup leaves no "
        "partial archive.",
    )
    backup.add_argument(
        "directory", nargs="?", metavar="DIR", type=Path,
        help="where to write the archive (default: backup_dir of stack.yaml, "
        "/var/backups/matrix-stack)",
    )
    backup.add_argument(
        "--keep", type=int, metavar="N",
        help="then delete this server's older archives in DIR, keeping the newest N",
    )
    backup.add_argument(
        "--schedule", choices=("daily", "off"),
        help="turn the daily backup timer on or off (with DIR and --keep, where and how many "
        "it keeps; default 7), then exit without a backup",
    )
    backup.add_argument(
        "--scheduled", action="store_true",
        help="what the timer runs: back up into backup_dir, keep backup_keep archives",
    )
    backup.set_defaults(handler=run_backup)


def progress(line: str) -> None:
    print(line, flush=True)


def run_backup(arguments: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from matrix_stack.base.errors import UsageError, ensure_root
    from matrix_stack.core.stack import current_settings
    from matrix_stack.features.data import backup

    ensure_root()
    settings = current_settings()
    if arguments.keep is not None and arguments.keep < 1:
        raise UsageError("--keep must be 1 or more")
    if arguments.schedule:
        return schedule(arguments)
    directory = arguments.directory or Path(settings.backup_dir)
    keep = settings.backup_keep if arguments.scheduled else arguments.keep
    with backup.exclusive_lock():
        started = time.monotonic()
        archive, manifest = backup.create(directory.absolute(), settings.server_name, progress)
        counts = ", ".join(f"{value} {key.replace('_', ' ')}" for key, value in
                           manifest.counts.items())
        print(f"wrote {archive} ({archive.stat().st_size // 2**10} KiB, {counts}) in "
              f"{time.monotonic() - started:.1f} s")
        if keep is not None:
            for removed in backup.prune(directory, settings.server_name, keep):
                print(f"removed {removed} (keeping the newest {keep})")
    return 0


def schedule(arguments: argparse.Namespace) -> int:
    from matrix_stack.core.stack import change

    def edit(stack: dict[str, Any]) -> dict[str, Any]:
        stack["backup_schedule"] = arguments.schedule
        if arguments.directory is not None:
            stack["backup_dir"] = str(arguments.directory.absolute())
        if arguments.keep is not None:
            stack["backup_keep"] = arguments.keep
        return stack

    changed = change(edit, source="command line")
    for line in changed.lines:
        print(line)
    settings = changed.settings
    if arguments.schedule == "daily":
        print(f"daily backup on: into {settings.backup_dir}, keeping {settings.backup_keep} "
              "(systemctl list-timers matrix-stack-backup.timer)")
    else:
        print("daily backup off")
    return 0
