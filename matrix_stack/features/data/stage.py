"""Unpack a verified backup archive beside where its data goes; nothing live is touched.

Media go into a directory next to the media store, the SQLite file next to the live one,
PostgreSQL into a new database; configuration files are kept in memory (they are small)
until restore.py swaps everything in.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import create_exclusive, lookup_ids
from matrix_stack.base.paths import APACHE_SITE_PATH, STACK_DIR, STACK_PATH, SYNAPSE_DIR
from matrix_stack.core import postgres
from matrix_stack.features.data.archive import (
    FILES_PREFIX,
    KNOWN_OWNERS,
    Manifest,
    check_name,
    member_path,
    open_archive,
)
from matrix_stack.features.data.counts import Counts, count_postgresql, count_sqlite

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
    counts: Counts | None = None
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
    if path == Path(manifest.signing_key_path) or path == APACHE_SITE_PATH:
        return True
    if path.is_relative_to(STACK_DIR):
        return True
    return path.parent == SYNAPSE_DIR / "conf.d" and path.suffix == ".yaml"


def owner_of(member: tarfile.TarInfo) -> tuple[str, str]:
    owner = member.uname if member.uname in KNOWN_OWNERS else "root"
    group = member.gname if member.gname in KNOWN_OWNERS else "root"
    try:
        lookup_ids(owner, group)
    except MatrixStackError:
        return "root", "root"
    return owner, group


DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class MediaStage:
    """The media store's stage: a directory beside it, root's with mode 0700 until handed over.

    The media store's parent belongs to matrix-synapse, which could swap a link in for any
    path root goes through there; so everything is done through descriptors, below the
    stage's own, never by path. Inside the stage the account can reach nothing, so what is
    made there gets its archived owner and mode at once; the stage itself gets its own last.
    """

    def __init__(self, media: Path) -> None:
        media.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=media.parent, prefix=f".{media.name}.restore-"))
        self.descriptor = os.open(self.path, DIRECTORY_FLAGS)
        if os.fstat(self.descriptor).st_uid != os.geteuid():
            os.close(self.descriptor)
            raise MatrixStackError(f"{self.path} was replaced as it was made: restore refused")
        os.fchmod(self.descriptor, 0o700)
        self.top: tarfile.TarInfo | None = None

    def add(self, relative: str, member: tarfile.TarInfo, stream: IO[bytes] | None) -> None:
        """Make the directory or file member at relative (a path below the media store)."""
        if not member.isdir() and stream is None:
            return
        parts = [] if relative == "." else relative.split(os.sep)
        if not parts:
            if stream is not None:
                raise MatrixStackError("the archive holds the media store as a file")
            self.top = member
            return
        parent = os.dup(self.descriptor)
        try:
            for part in parts[:-1]:
                child = open_directory(parent, part)
                os.close(parent)
                parent = child
            if stream is not None:
                write_owned(parent, parts[-1], stream, member)
                return
            directory = open_directory(parent, parts[-1])
            try:
                set_owner_mode(directory, member)
            finally:
                os.close(directory)
        finally:
            os.close(parent)

    def hand_over(self) -> None:
        """Give the stage its archived owner and mode: from now on Synapse's account may act."""
        if self.top is not None:
            set_owner_mode(self.descriptor, self.top)

    def close(self) -> None:
        os.close(self.descriptor)


def open_directory(parent: int, name: str) -> int:
    """Open the directory name below parent, made if missing, never through a link.

    Only for the inside of a MediaStage, where nobody else can make or swap an entry.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o777, dir_fd=parent)
    return os.open(name, DIRECTORY_FLAGS, dir_fd=parent)


def set_owner_mode(descriptor: int, member: tarfile.TarInfo) -> None:
    owner, group = owner_of(member)
    os.fchown(descriptor, *lookup_ids(owner, group))
    os.fchmod(descriptor, member.mode & 0o7777)


def write_owned(parent: int, name: str, stream: IO[bytes], member: tarfile.TarInfo) -> None:
    uid, gid = lookup_ids(*owner_of(member))
    with os.fdopen(create_exclusive(name, uid, gid, member.mode & 0o7777, dir_fd=parent),
                   "wb") as target:
        shutil.copyfileobj(stream, target, 1 << 20)
        target.flush()
        os.utime(target.fileno(), (member.mtime, member.mtime))


def stage(archive: Path, manifest: Manifest, stamp: str, keep: Path) -> Staged:
    """Unpack the archive beside each destination; nothing live is touched."""
    staged = Staged()
    media = Path(manifest.media_path)
    media_prefix = FILES_PREFIX + str(media).lstrip("/") + "/"
    media_stage: MediaStage | None = None
    try:
        with open_archive(archive) as tar:
            for member in tar:
                name = member.name.rstrip("/")
                check_name(name, archive)
                stream = tar.extractfile(member) if member.isfile() else None
                if name == manifest.database_member and stream is not None:
                    stage_database(stream, manifest, stamp, keep, staged)
                elif (name + "/").startswith(media_prefix):
                    if media_stage is None:
                        media_stage = MediaStage(media)
                        staged.media = media_stage.path
                    relative = os.path.relpath(member_path(name), media)
                    media_stage.add(relative, member, stream)
                elif name.startswith(FILES_PREFIX) and stream is not None:
                    path = member_path(name)
                    data = stream.read()
                    if restorable(path, manifest):
                        staged.configs[path] = ConfigFile(data, member.mode & 0o7777,
                                                          *owner_of(member))
                    elif (
                        path.parent == SYNAPSE_DIR
                        and path.name in SYNAPSE_OWN
                        and (not path.exists() or path.read_bytes() != data)
                    ):
                        staged.differing.append(path)
        if media_stage is not None:
            media_stage.hand_over()
    except BaseException:
        staged.discard()
        raise
    finally:
        if media_stage is not None:
            media_stage.close()
    return staged


def stage_database(
    stream: IO[bytes], manifest: Manifest, stamp: str, keep: Path, staged: Staged
) -> None:
    if manifest.engine == "sqlite":
        live = Path(manifest.sqlite_path)
        live.parent.mkdir(parents=True, exist_ok=True)
        staged.sqlite = live.with_name(f".{live.name}.restore-{stamp}")
        uid, gid = lookup_ids("matrix-synapse", "root")
        with gzip.open(stream) as unpacked, os.fdopen(
            create_exclusive(staged.sqlite, uid, gid, 0o600), "wb"
        ) as target:
            shutil.copyfileobj(unpacked, target, 1 << 20)
        staged.counts = count_sqlite(staged.sqlite, copy=True)
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
    staged.counts = count_postgresql(database=name)


def archived_stack(staged: Staged) -> dict[str, Any]:
    config = staged.configs.get(STACK_PATH)
    if config is None:
        raise MatrixStackError("the archive holds no /etc/matrix-stack/stack.yaml")
    try:
        value = yaml.safe_load(config.data)
    except yaml.YAMLError:
        raise MatrixStackError("the archive's stack.yaml is not valid YAML") from None
    if not isinstance(value, dict):
        raise MatrixStackError("the archive's stack.yaml is not a mapping")
    return value
