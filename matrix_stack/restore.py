"""matrix-stack-admin restore ARCHIVE: put a backup back, or leave everything as it was.

Order of work: verify every checksum, check the server name and the target (nothing stopped
yet); stage the data next to where it goes (media beside the media store, the SQLite file
beside the live one, PostgreSQL into a new database); only then stop Synapse and swap by
renames, each with its undo recorded. Any failure runs the undos and starts Synapse on the
previous data. What the restore replaced is kept, and named at the end.
"""

from __future__ import annotations

import datetime
import gzip
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from matrix_stack import answers, backup, postgres, services
from matrix_stack.apply import apply
from matrix_stack.backup_archive import (
    FILES_PREFIX,
    KNOWN_OWNERS,
    Manifest,
    check_name,
    member_path,
    open_archive,
    verify,
)
from matrix_stack.bootstrap import wait_until_answering
from matrix_stack.errors import MatrixStackError
from matrix_stack.files import lookup_ids
from matrix_stack.run import run
from matrix_stack.synapse_api import TOKEN_PATH, Synapse

KEEP_ROOT = Path("/var/lib/matrix-stack")
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
# Files of /etc/matrix-synapse that matrix-synapse's own package writes (conffiles, or
# rewritten by its postinst): kept as installed, their archived copies only compared.
SYNAPSE_OWN = ("homeserver.yaml", "log.yaml", "server_name.yaml", "report_stats.yaml")


@dataclass
class ConfigFile:
    data: bytes
    mode: int
    owner: str
    group: str


@dataclass
class Staged:
    """The archive's data, unpacked beside its destination, not live yet."""

    configs: dict[Path, ConfigFile] = field(default_factory=dict)
    media: Path | None = None
    sqlite: Path | None = None
    postgresql: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    differing: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        if self.media is not None:
            shutil.rmtree(self.media, ignore_errors=True)
        if self.sqlite is not None:
            self.sqlite.unlink(missing_ok=True)
        if self.postgresql is not None:
            postgres.drop_database(self.postgresql)


def restorable(path: Path, manifest: Manifest) -> bool:
    """Return whether an archived configuration file is written back."""
    if path == Path(manifest.signing_key_path) or path == backup.APACHE_SITE:
        return True
    if path.is_relative_to(backup.STACK_DIR):
        return True
    return path.parent == backup.SYNAPSE_DIR / "conf.d" and path.suffix == ".yaml"


def owner_of(member: tarfile.TarInfo) -> tuple[str, str]:
    owner = member.uname if member.uname in KNOWN_OWNERS else "root"
    group = member.gname if member.gname in (*KNOWN_OWNERS, "turnserver") else "root"
    try:
        lookup_ids(owner, group)
    except MatrixStackError:
        return "root", "root"
    return owner, group


def write_owned(path: Path, stream: IO[bytes], member: tarfile.TarInfo) -> None:
    owner, group = owner_of(member)
    uid, gid = lookup_ids(owner, group)
    with path.open("xb") as target:
        os.fchown(target.fileno(), uid, gid)
        os.fchmod(target.fileno(), member.mode & 0o7777)
        shutil.copyfileobj(stream, target, 1 << 20)
    os.utime(path, (member.mtime, member.mtime))


def make_directory(path: Path, member: tarfile.TarInfo) -> None:
    path.mkdir(parents=True, exist_ok=True)
    owner, group = owner_of(member)
    os.chown(path, *lookup_ids(owner, group))
    os.chmod(path, member.mode & 0o7777)


def stage(archive: Path, manifest: Manifest, stamp: str, keep: Path) -> Staged:
    """Unpack the archive beside each destination; nothing live is touched."""
    staged = Staged()
    media = Path(manifest.media_path)
    media_prefix = FILES_PREFIX + str(media).lstrip("/") + "/"
    try:
        with open_archive(archive) as tar:
            for member in tar:
                name = member.name.rstrip("/")
                check_name(name, archive)
                stream = tar.extractfile(member) if member.isfile() else None
                if name == manifest.database_member and stream is not None:
                    stage_database(stream, manifest, stamp, keep, staged)
                elif (name + "/").startswith(media_prefix):
                    if staged.media is None:
                        media.parent.mkdir(parents=True, exist_ok=True)
                        staged.media = Path(tempfile.mkdtemp(
                            dir=media.parent, prefix=f".{media.name}.restore-"))
                    target = staged.media / os.path.relpath(member_path(name), media)
                    if member.isdir():
                        make_directory(target, member)
                    elif stream is not None:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        write_owned(target, stream, member)
                elif name.startswith(FILES_PREFIX) and stream is not None:
                    path = member_path(name)
                    data = stream.read()
                    if restorable(path, manifest):
                        staged.configs[path] = ConfigFile(data, member.mode & 0o7777,
                                                          *owner_of(member))
                    elif (
                        path.parent == backup.SYNAPSE_DIR
                        and path.name in SYNAPSE_OWN
                        and (not path.exists() or path.read_bytes() != data)
                    ):
                        staged.differing.append(path)
    except BaseException:
        staged.discard()
        raise
    return staged


def stage_database(
    stream: IO[bytes], manifest: Manifest, stamp: str, keep: Path, staged: Staged
) -> None:
    if manifest.engine == "sqlite":
        live = Path(manifest.sqlite_path)
        live.parent.mkdir(parents=True, exist_ok=True)
        staged.sqlite = live.with_name(f".{live.name}.restore-{stamp}")
        uid, gid = lookup_ids("matrix-synapse", "root")
        with gzip.open(stream) as unpacked, staged.sqlite.open("xb") as target:
            os.fchown(target.fileno(), uid, gid)
            os.fchmod(target.fileno(), 0o600)
            shutil.copyfileobj(unpacked, target, 1 << 20)
        staged.counts = backup.count_sqlite(staged.sqlite, copy=True)
        return
    dump = keep / "matrix_synapse.pgdump"
    with dump.open("xb") as target:
        shutil.copyfileobj(stream, target, 1 << 20)
    name = f"{postgres.DATABASE}_restore"
    try:
        postgres.restore_dump(dump, name)
    finally:
        dump.unlink()
    staged.postgresql = name
    staged.counts = backup.count_postgresql(name)


def archived_stack(staged: Staged) -> dict[str, Any]:
    config = staged.configs.get(answers.STACK_PATH)
    if config is None:
        raise MatrixStackError("the archive holds no /etc/matrix-stack/stack.yaml")
    try:
        value = yaml.safe_load(config.data)
    except yaml.YAMLError:
        raise MatrixStackError("the archive's stack.yaml is not valid YAML") from None
    if not isinstance(value, dict):
        raise MatrixStackError("the archive's stack.yaml is not a mapping")
    return value


def systemctl(action: str) -> None:
    run(["systemctl", action, "matrix-synapse.service"], timeout=300)


def copy_owned(source: Path, target: Path) -> None:
    """Copy a file with its mode, times, owner and group."""
    shutil.copy2(source, target)
    status = source.stat()
    os.chown(target, status.st_uid, status.st_gid)


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
        previous = self.keep / "files" / str(path).lstrip("/")
        if path.exists():
            previous.parent.mkdir(parents=True, exist_ok=True)
            copy_owned(path, previous)
            self.undo.append(lambda: copy_owned(previous, path))
        else:
            self.undo.append(lambda: path.unlink(missing_ok=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.restore-{self.stamp}")
        with temporary.open("wb") as target:
            os.fchown(target.fileno(), *lookup_ids(new.owner, new.group))
            os.fchmod(target.fileno(), new.mode)
            target.write(new.data)
        temporary.rename(path)

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
DATA_ROOT = Path("/var/lib/matrix-synapse")


def check_paths(manifest: Manifest, archive: Path) -> None:
    """Refuse an archive whose data paths lie outside Synapse's directories."""
    try:
        layout: backup.Layout | None = backup.Layout.read()
    except MatrixStackError:
        layout = None
    wanted = [
        (manifest.media_path, DATA_ROOT, layout.media_path if layout else None),
        (manifest.signing_key_path, backup.SYNAPSE_DIR,
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


def restore(
    archive: Path, progress: Callable[[str], None], synapse: Synapse | None = None
) -> tuple[Manifest, list[str]]:
    """Restore archive over this server; return its manifest and what was kept aside."""
    progress(f"verifying {archive}")
    manifest = verify(archive, progress)
    check_paths(manifest, archive)
    stack = answers.read_stack()
    current_name = str(stack.get("server_name", ""))
    if manifest.server_name != current_name:
        raise MatrixStackError(
            f"{archive} is a backup of {manifest.server_name}, this server is {current_name}: "
            f"restore it on a matrix-stack installed with server name {manifest.server_name}"
        )
    if manifest.engine == "postgresql":
        postgres.check_server()
        postgres.ensure_role()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    keep = KEEP_ROOT / f"restore-{stamp}"
    keep.mkdir(mode=0o700, parents=True)
    progress("unpacking the archive beside the live data (Synapse still runs)")
    staged = stage(archive, manifest, stamp, keep)
    try:
        new_stack = archived_stack(staged)
        settings = answers.load_settings(new_stack, f"{archive}: stack.yaml")
        if manifest.engine == "sqlite" and staged.counts != _counted(manifest.counts):
            raise MatrixStackError(
                f"the database copy holds {staged.counts}, its manifest says "
                f"{_counted(manifest.counts)}: the archive is inconsistent"
            )
    except BaseException:
        staged.discard()
        raise
    progress("stopping Synapse")
    systemctl("stop")
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
            swap.config(path, config)
        TOKEN_PATH.unlink(missing_ok=True)  # a cache: made again by one login
        progress("applying the restored stack.yaml")
        apply(settings, prepare_database=lambda _settings, _root: [])
        # apply restarts what it rewrites; these read restored files it found already in place.
        _restart_readers(settings.turn_enable)
        systemctl("start")
        if not wait_until_answering(synapse or Synapse(), 180, time.sleep):
            raise MatrixStackError("Synapse did not answer within 180 s on the restored data")
        after = (backup.count_sqlite(Path(manifest.sqlite_path)) if manifest.engine == "sqlite"
                 else backup.count_postgresql())
        if _counted(after) != _counted(staged.counts):
            raise MatrixStackError(f"Synapse's database holds {after}, the archive {staged.counts}")
    except BaseException as error:
        progress("failed: putting the previous data back")
        _stop_quietly()
        problems = swap.roll_back()
        staged.discard()
        try:
            previous = answers.load_settings(stack, str(answers.STACK_PATH))
            apply(previous, prepare_database=lambda _settings, _root: [])
            _restart_readers(previous.turn_enable)
        except MatrixStackError as apply_error:
            problems.append(str(apply_error))
        _start_quietly()
        detail = f"; could not undo everything: {problems[0]}" if problems else ""
        if isinstance(error, MatrixStackError):
            raise MatrixStackError(
                f"restore failed ({error}); the previous data is back in place{detail}"
            ) from None
        raise
    swap.kept.append(str(keep))
    return manifest, [*swap.kept, *(f"{path} (kept as installed; differs)"
                                    for path in staged.differing)]


def _counted(counts: dict[str, int]) -> dict[str, int]:
    return {table: counts[table] for table in backup.COUNTED_TABLES if table in counts}


def _restart_readers(turn: bool) -> None:
    """Restart Apache and coturn on the configuration and certificate now on disk."""
    _restarted, failed = services.restart(["coturn", "apache2"] if turn else ["apache2"])
    if failed:
        raise MatrixStackError(f"{', '.join(failed)} did not start; see: journalctl -u {failed[0]}")


def _stop_quietly() -> None:
    run(["systemctl", "stop", "matrix-synapse.service"], check=False, timeout=300)


def _start_quietly() -> None:
    run(["systemctl", "start", "matrix-synapse.service"], check=False, timeout=300)
