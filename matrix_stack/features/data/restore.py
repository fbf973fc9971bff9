"""matrix-stack-admin restore ARCHIVE: put a backup back, or leave everything as it was.

Order of work: verify every checksum, check the server name and the target (nothing stopped
yet); stage the data next to where it goes (media beside the media store, the SQLite file
beside the live one, PostgreSQL into a new database); only then stop Synapse and swap by
renames, each with its undo recorded. Any failure runs the undos and starts Synapse on the
previous data. What the restore replaced is kept, and named at the end.
"""

from __future__ import annotations

import datetime
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from matrix_stack.base import undo
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import lookup_ids, replace_file
from matrix_stack.base.paths import POSTGRESQL_DATA_DIR, STACK_PATH, SYNAPSE_DIR, TOKEN_PATH
from matrix_stack.base.paths import STATE_DIR as KEEP_ROOT
from matrix_stack.base.paths import SYNAPSE_DATA_DIR as DATA_ROOT
from matrix_stack.core import postgres, services, stack
from matrix_stack.core.services import synapse_unit
from matrix_stack.core.settings import DatabaseMode, Settings
from matrix_stack.features.bootstrap import wait_until_answering
from matrix_stack.features.data import backup
from matrix_stack.features.data.archive import Manifest, files_member, verify
from matrix_stack.features.data.counts import COUNTED_TABLES, Counts, count_postgresql, count_sqlite
from matrix_stack.features.data.stage import ConfigFile, Staged, archived_stack, stage
from matrix_stack.synapse.api import Synapse

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class Swap:
    """Renames and writes done on the live system, each with its undo."""

    def __init__(self, keep: Path, stamp: str) -> None:
        self.keep = keep
        self.stamp = stamp
        self.undo: list[Callable[[], object]] = []
        self.kept: list[str] = []

    def rename_aside(self, path: Path) -> None:
        if not path.exists():
            return
        aside = path.with_name(f"{path.name}.before-restore-{self.stamp}")
        path.rename(aside)
        self.undo.append(lambda: aside.rename(path))
        self.kept.append(str(aside))

    def put(self, staged: Path, path: Path) -> None:
        staged.rename(path)
        self.undo.append(lambda: path.rename(staged))

    def database(self, staged_name: str) -> None:
        live = postgres.DATABASE
        if postgres.database_exists(live):
            aside = f"{live}_before_restore_{self.stamp.lower()}"
            postgres.rename_database(live, aside)
            self.undo.append(lambda: postgres.rename_database(aside, live))
            self.kept.append(f"PostgreSQL database {aside}")
        postgres.rename_database(staged_name, live)
        self.undo.append(lambda: postgres.rename_database(live, staged_name))

    def config(self, path: Path, new: ConfigFile) -> None:
        """Write a configuration file of the archive; the one it replaces is kept in keep.

        These live in directories Synapse's account can write: read, written and put back
        only through descriptors that never follow a link planted there."""
        saved = undo.save(path, Path("/"))
        if saved.data is not None and saved.link is None:
            previous = self.keep / "files" / str(path).lstrip("/")
            replace_file(previous, saved.data, saved.mode, (saved.uid, saved.gid))
        self.undo.append(lambda: undo.put_back(saved, Path("/")))
        replace_file(path, new.data, new.mode, lookup_ids(new.owner, new.group))

    def roll_back(self) -> list[str]:
        problems = []
        for step in reversed(self.undo):
            try:
                step()
            except (OSError, MatrixStackError) as error:
                problems.append(str(error))
        return problems


# Where an archive may put Synapse's data: its own directories, or where Synapse's current
# configuration says (an archive is not trusted to name any path on this host).


def check_paths(manifest: Manifest, archive: Path) -> None:
    """Refuse an archive whose data paths lie outside Synapse's directories."""
    try:
        layout: backup.Layout | None = backup.Layout.read()
    except MatrixStackError:
        layout = None
    wanted = [
        (manifest.media_path, DATA_ROOT, layout.media_path if layout else None),
        (manifest.signing_key_path, SYNAPSE_DIR,
         layout.signing_key_path if layout else None),
    ]
    if manifest.engine == "sqlite":
        wanted.append((manifest.sqlite_path, DATA_ROOT, layout.sqlite_path if layout else None))
    for text, allowed, current in wanted:
        path = Path(text)
        if not path.is_absolute() or ".." in path.parts or not (
            path.is_relative_to(allowed) or path == current
        ):
            raise MatrixStackError(
                f"{archive} puts Synapse's data in {text!r}, outside {allowed}: refused"
            )


def staging_needs(manifest: Manifest, keep: Path) -> dict[Path, int]:
    """Return the bytes the archive's data takes in each directory it is unpacked into."""
    media = Path(manifest.media_path)
    prefix = files_member(media) + "/"
    needs = {media.parent: sum(int(entry["size"]) for name, entry in manifest.members.items()
                               if name.startswith(prefix))}
    database = int(manifest.members.get(manifest.database_member, {}).get("size", 0))
    unpacked = max(manifest.database_bytes, database)
    if manifest.engine == "sqlite":
        directory = Path(manifest.sqlite_path).parent
        needs[directory] = needs.get(directory, 0) + unpacked
    else:
        needs[keep] = database  # the dump, until pg_restore has read it
        needs[POSTGRESQL_DATA_DIR] = unpacked
    return needs


def check_staging_space(manifest: Manifest, keep: Path) -> None:
    """Refuse, before anything is copied, unless each filesystem unpacked onto has room."""
    filesystems: dict[int, tuple[Path, int]] = {}
    for directory, size in staging_needs(manifest, keep).items():
        existing = next(path for path in (directory, *directory.parents) if path.exists())
        device = existing.stat().st_dev
        where, total = filesystems.get(device, (existing, 0))
        filesystems[device] = (where, total + size)
    for where, total in filesystems.values():
        backup.check_free_space(where, total + 2**20)


def check_engine(settings: Settings, manifest: Manifest) -> None:
    """Refuse an archive whose stack.yaml and database copy disagree on the engine."""
    engine = "postgresql" if settings.database is DatabaseMode.POSTGRESQL else "sqlite"
    if engine != manifest.engine or settings.remote_database:
        raise MatrixStackError(
            f"the archive's stack.yaml says database {settings.database}"
            f"{' on ' + settings.database_host if settings.remote_database else ''}, its "
            f"database copy is {manifest.engine}: not an archive this restores"
        )


def restore(
    archive: Path, progress: Callable[[str], None], synapse: Synapse | None = None
) -> tuple[Manifest, list[str]]:
    """Restore archive over this server; return its manifest and what was kept aside."""
    progress(f"verifying {archive}")
    manifest = verify(archive, progress)
    check_paths(manifest, archive)
    old_stack = stack.read_stack()
    current_name = str(old_stack.get("server_name", ""))
    if manifest.server_name != current_name:
        raise MatrixStackError(
            f"{archive} is a backup of {manifest.server_name}, this server is {current_name}: "
            f"restore it on a matrix-stack installed with server name {manifest.server_name}"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    keep = KEEP_ROOT / f"restore-{stamp}"
    check_staging_space(manifest, keep)
    if manifest.engine == "postgresql":
        postgres.check_server()
        postgres.ensure_role()
    keep.mkdir(mode=0o700, parents=True)
    progress("unpacking the archive beside the live data (Synapse still runs)")
    staged: Staged | None = None
    try:
        staged = stage(archive, manifest, stamp, keep)
        new_stack = archived_stack(staged)
        source = f"{archive}: stack.yaml"
        settings = stack.load_settings(new_stack, source)
        check_engine(settings, manifest)
        archived = Counts(*(int(manifest.counts.get(table, -1)) for table in COUNTED_TABLES))
        if manifest.engine == "sqlite" and staged.counts != archived:
            raise MatrixStackError(
                f"the database copy holds {staged.counts}, its manifest says {archived}: the "
                "archive is inconsistent"
            )
    except BaseException:
        if staged is not None:
            staged.discard()
        shutil.rmtree(keep, ignore_errors=True)
        raise
    progress("stopping Synapse")
    synapse_unit("stop")
    swap = Swap(keep, stamp)
    try:
        if staged.media is not None:
            media = Path(manifest.media_path)
            swap.rename_aside(media)
            swap.put(staged.media, media)
            staged.media = None
        if staged.sqlite is not None:
            live = Path(manifest.sqlite_path)
            for suffix in ("", *SQLITE_COMPANIONS):
                swap.rename_aside(live.with_name(live.name + suffix))
            swap.put(staged.sqlite, live)
            staged.sqlite = None
        if staged.postgresql is not None:
            swap.database(staged.postgresql)
            staged.postgresql = None
        for path, config in sorted(staged.configs.items()):
            if path != STACK_PATH:  # written by the transaction below
                swap.config(path, config)
        TOKEN_PATH.unlink(missing_ok=True)  # a cache: made again by one login
        progress("applying the restored stack.yaml")
        # Without postgres.prepare: the data swapped in is what the restored settings name.
        stack.change(lambda _current: new_stack, source=source, database_ready=True)
        # apply restarts what it rewrites; these read restored files it found already in place.
        _restart_readers(settings.turn_enable)
        synapse_unit("start")
        if not wait_until_answering(synapse or Synapse(), 180, time.sleep):
            raise MatrixStackError("Synapse did not answer within 180 s on the restored data")
        after = (count_sqlite(Path(manifest.sqlite_path)) if manifest.engine == "sqlite"
                 else count_postgresql())
        if after != staged.counts:
            raise MatrixStackError(f"Synapse's database holds {after}, the archive {staged.counts}")
    except BaseException as error:
        progress("failed: putting the previous data back")
        synapse_unit("stop", check=False)
        problems = swap.roll_back()
        staged.discard()
        try:
            previous = stack.change(lambda _current: old_stack, database_ready=True).settings
            _restart_readers(previous.turn_enable)
        except MatrixStackError as apply_error:
            problems.append(str(apply_error))
        synapse_unit("start", check=False)
        detail = f"; could not undo everything: {problems[0]}" if problems else ""
        if isinstance(error, MatrixStackError):
            raise MatrixStackError(
                f"restore failed ({error}); the previous data is back in place{detail}"
            ) from None
        raise
    swap.kept.append(str(keep))
    return manifest, [*swap.kept, *(f"{path} (kept as installed; differs)"
                                    for path in staged.differing)]


def _restart_readers(turn: bool) -> None:
    """Restart Apache and coturn on the configuration and certificate now on disk."""
    _restarted, failed = services.restart(["coturn", "apache2"] if turn else ["apache2"])
    if failed:
        raise MatrixStackError(f"{', '.join(failed)} did not start; see: journalctl -u {failed[0]}")
