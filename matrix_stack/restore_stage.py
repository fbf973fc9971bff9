"""Unpack a verified backup archive beside where its data goes; nothing live is touched.

Media go into a directory next to the media store, the SQLite file next to the live one,
PostgreSQL into a new database; configuration files are kept in memory (they are small)
until restore.py swaps everything in.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from matrix_stack import answers, backup, postgres
from matrix_stack.backup_archive import (
    FILES_PREFIX,
    KNOWN_OWNERS,
    Manifest,
    check_name,
    member_path,
    open_archive,
)
from matrix_stack.db_counts import Counts, count_postgresql, count_sqlite
from matrix_stack.errors import MatrixStackError
from matrix_stack.files import lookup_ids

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
    if path == Path(manifest.signing_key_path) or path == backup.APACHE_SITE:
        return True
    if path.is_relative_to(backup.STACK_DIR):
        return True
    return path.parent == backup.SYNAPSE_DIR / "conf.d" and path.suffix == ".yaml"


def owner_of(member: tarfile.TarInfo) -> tuple[str, str]:
    owner = member.uname if member.uname in KNOWN_OWNERS else "root"
    group = member.gname if member.gname in KNOWN_OWNERS else "root"
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
