"""Move Synapse from SQLite to PostgreSQL with Synapse's own port script; undo on any failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import yaml

from matrix_stack.base import secrets
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import create_exclusive, lookup_ids
from matrix_stack.base.paths import DEFAULT_SQLITE_PATH as SYNAPSE_SQLITE_PATH
from matrix_stack.base.paths import POSTGRESQL_DATA_DIR, STACK_PATH
from matrix_stack.base.run import run
from matrix_stack.core import postgres, stack
from matrix_stack.core.host import synapse_has_database, synapse_sqlite_path
from matrix_stack.core.services import SYNAPSE_USER
from matrix_stack.core.services import synapse_unit as systemctl
from matrix_stack.core.settings import DatabaseMode, Settings
from matrix_stack.features.bootstrap import wait_until_answering
from matrix_stack.features.data.counts import COUNTED_TABLES, Counts, count_postgresql, count_sqlite
from matrix_stack.synapse.api import Synapse
from matrix_stack.synapse.config import read_merged_config

# Debian's matrix-synapse installs it in /usr/bin; matrix.org's package in its virtualenv.
PORT_SCRIPTS = (
    Path("/usr/bin/synapse_port_db"),
    Path("/opt/venvs/matrix-synapse/bin/synapse_port_db"),
)
PORT_TIMEOUT = 24 * 3600
# synapse_port_db refuses a database whose background updates are not all done.
BACKGROUND_UPDATES_WAIT = 900


def find_port_script() -> Path:
    """Return the installed synapse_port_db, or raise naming both places looked at."""
    for path in PORT_SCRIPTS:
        if path.exists():
            return path
    raise MatrixStackError(
        f"Synapse's port script is missing (looked for {' and '.join(map(str, PORT_SCRIPTS))})"
    )


def pending_background_updates(path: Path = SYNAPSE_SQLITE_PATH) -> int:
    """Return how many background updates Synapse has still to run on its SQLite database."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT count(*) FROM background_updates").fetchone()
    except sqlite3.Error as error:
        raise MatrixStackError(f"cannot read background updates in {path}: {error}") from None
    return int(row[0])


def wait_for_background_updates(
    sqlite: Path,
    progress: Callable[[str], None],
    seconds: float = BACKGROUND_UPDATES_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait for the running Synapse to finish its background updates (synapse_port_db needs it)."""
    deadline = time.monotonic() + seconds
    pending = pending_background_updates(sqlite)
    if pending:
        progress(f"waiting for Synapse to finish {pending} background updates")
    while pending:
        if time.monotonic() >= deadline:
            raise MatrixStackError(
                f"Synapse still has {pending} background updates to run on {sqlite}; keep it "
                "running and try again later"
            )
        sleep(2)
        pending = pending_background_updates(sqlite)


TABLES_SQL = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"


@dataclass(frozen=True)
class Target:
    """The PostgreSQL database the data goes to: on this host, or remote."""

    settings: Settings

    def __str__(self) -> str:
        return postgres.describe(self.settings)

    def prepare(self, progress: Callable[[str], None]) -> None:
        if self.settings.remote_database:
            progress(postgres.check_remote(self.settings))
            return
        postgres.check_server()
        for line in postgres.ensure_database():
            progress(line)

    def is_empty(self) -> bool:
        if self.settings.remote_database:
            return postgres.remote_query(self.settings, TABLES_SQL)[0][0] == "0"
        return postgres.database_is_empty()

    def counts(self) -> Counts:
        if not self.settings.remote_database:
            return count_postgresql()
        return Counts(*(
            int(postgres.remote_query(self.settings, f"SELECT count(*) FROM {table}")[0][0])
            for table in COUNTED_TABLES
        ))


def check_free_disk(sqlite: Path, data_dir: Path = POSTGRESQL_DATA_DIR) -> None:
    """Refuse unless PostgreSQL's disk has twice the SQLite file's size free (data, indexes)."""
    needed = 2 * sqlite.stat().st_size
    free = shutil.disk_usage(data_dir if data_dir.exists() else Path("/")).free
    if free < needed:
        raise MatrixStackError(
            f"{data_dir} has {free // 2**20} MiB free; the migration needs about "
            f"{needed // 2**20} MiB: free some space first"
        )


def port_config(config: dict[str, Any], block: dict[str, Any] | None = None) -> str:
    """Return Synapse's configuration with the PostgreSQL database block, for the port script."""
    return yaml.safe_dump({**config, "database": block or postgres.SYNAPSE_DATABASE_BLOCK})


def run_port_script(script: Path, sqlite: Path, target: Target) -> None:
    """Copy the SQLite data into PostgreSQL as the matrix-synapse user (peer authentication)."""
    uid, gid = lookup_ids(SYNAPSE_USER, "root")
    with tempfile.TemporaryDirectory(prefix="matrix-stack-port-") as stage:
        # Written while the directory is root's, given to Synapse's account last: once it
        # owns the directory it could plant links there, which root must not follow.
        config = Path(stage) / "postgres.yaml"
        block = postgres.synapse_database_block(target.settings)
        text = port_config(read_merged_config(), block)
        with os.fdopen(create_exclusive(config, uid, gid, 0o600), "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chown(stage, uid, gid, follow_symlinks=False)
        run(
            [str(script), "--sqlite-database", str(sqlite), "--postgres-config", str(config)],
            user=SYNAPSE_USER,
            timeout=PORT_TIMEOUT,
        )


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs, so its undo runs as for Ctrl-C."""

    def interrupt(_signal: int, _frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def switch_to(new_stack: dict[str, Any]) -> None:
    """Make stack.yaml new_stack and apply it, as one transaction.

    Without postgres.prepare: the migration made its checks, and on the way back it would
    refuse SQLite, since PostgreSQL is live then (holding only a copy of the SQLite data).
    """
    stack.change(lambda _current: new_stack, database_ready=True)


def migrate(
    progress: Callable[[str], None],
    synapse: Synapse | None = None,
    remote: dict[str, Any] | None = None,
    password: str | None = None,
) -> Counts:
    """Port Synapse's SQLite data to PostgreSQL, switch to it and verify; undo on any failure.

    remote: database_host, database_port, database_name, database_user of a remote server
    (its password, when given, is checked there, then stored); None: PostgreSQL on this host.
    """
    old_stack = stack.read_stack()
    settings = stack.load_settings(old_stack, str(STACK_PATH))
    if settings.database is DatabaseMode.POSTGRESQL:
        raise MatrixStackError("database is already postgresql in stack.yaml")
    sqlite = synapse_has_database()
    if sqlite is None:
        raise MatrixStackError(
            f"{synapse_sqlite_path()} holds no data: answer postgresql instead, with: "
            "dpkg-reconfigure matrix-stack"
        )
    new_stack = {**old_stack, **(remote or {"database_host": ""}), "database": "postgresql"}
    target = Target(stack.load_settings(new_stack, "command line"))
    if password is not None:
        # Checked from a temporary passfile first: a wrong password never replaces a right one.
        settings_new = target.settings
        check = (
            (lambda staged: postgres.check_remote(settings_new, staged))
            if settings_new.remote_database else None
        )
        secrets.store_database_password(password, check=check)
    elif target.settings.remote_database and not secrets.has_database_password():
        raise MatrixStackError(
            f"no password stored for PostgreSQL role {target.settings.database_user}: "
            "give it with --password-file"
        )
    script = find_port_script()
    target.prepare(progress)
    if not target.is_empty():
        raise MatrixStackError(f"{target} is not empty; migrate only into an empty one")
    if not target.settings.remote_database:
        check_free_disk(sqlite)
    wait_for_background_updates(sqlite, progress)
    progress("stopping Synapse")
    # As restore does: any BaseException (Ctrl-C, SIGTERM made one below, a bug) runs the undo;
    # the stop is inside, since an interrupted systemctl may have stopped Synapse all the same.
    with interrupt_on_sigterm():
        try:
            systemctl("stop")
            # Counted once Synapse is stopped: nothing can register in between.
            before = count_sqlite(sqlite)
            started = time.monotonic()
            progress(
                f"copying {before} from {sqlite} into {target} with {script.name} "
                "(this can take a while)"
            )
            run_port_script(script, sqlite, target)
            progress(f"copied in {time.monotonic() - started:.0f} s; checking the counts")
            verify(before, target)
            progress("switching Synapse to PostgreSQL")
            switch_to(new_stack)
            systemctl("start")
            if not wait_until_answering(synapse or Synapse(), 120, time.sleep):
                raise MatrixStackError("Synapse did not answer on PostgreSQL within 120 s")
            verify(before, target)
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt)
            progress(f"{'interrupted' if interrupted else 'failed'}: going back to SQLite")
            restore(old_stack)
            back = (f"Synapse runs on SQLite again, {sqlite} untouched; empty {target} before "
                    "trying again")
            if interrupted:
                raise MatrixStackError(f"migration interrupted; {back}") from None
            if isinstance(error, (MatrixStackError, OSError)):
                raise MatrixStackError(f"migration failed ({error}); {back}") from None
            raise
    progress(set_aside_sqlite(sqlite, before, target))
    return before


def set_aside_sqlite(sqlite: Path, counts: Counts, target: Target) -> str:
    """Rename the SQLite database now copied and verified, so nothing mistakes it for live data.

    Done once Synapse runs on PostgreSQL, past the undo: a failure here leaves the migration
    done. Return the line saying so.
    """
    try:
        kept = postgres.set_aside(sqlite, "migrated")
    except (MatrixStackError, OSError) as error:
        raise MatrixStackError(
            f"Synapse runs on {target} with {counts}, but its old SQLite database {sqlite} could "
            f"not be set aside ({error}): rename it by hand, to keep it as an old copy"
        ) from None
    return (f"set aside the SQLite database {sqlite} as {kept}: Synapse's data is in {target} "
            "now; nothing was deleted")


def verify(before: Counts, target: Target) -> None:
    """Raise unless PostgreSQL holds as many users and rooms as SQLite did."""
    after = target.counts()
    if after != before:
        raise MatrixStackError(f"PostgreSQL holds {after}, SQLite held {before}")


def restore(old_stack: dict[str, Any]) -> None:
    """Put the SQLite configuration back and start Synapse on it."""
    try:
        switch_to(old_stack)
    finally:
        systemctl("start")
