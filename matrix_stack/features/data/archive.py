"""The backup archive: an uncompressed tar whose last member is a manifest of checksums.

Members are ``database/…`` (a consistent copy of Synapse's database: SQLite's online backup,
gzipped, or ``pg_dump -Fc``) and ``files/<absolute path>`` (configuration, secrets, signing
key, media). ``manifest.json`` comes last, so that writing the archive reads every file once;
reading it back checks every member against the manifest before anything is changed.
Only regular files and directories are accepted, with names that stay inside their prefix:
the archive is trusted no more than any other input (Python 3.11 has no tarfile data_filter,
so nothing here uses extractall).
"""

from __future__ import annotations

import errno
import grp
import hashlib
import io
import json
import os
import pwd
import stat
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from matrix_stack.base.errors import MatrixStackError

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE_PREFIX = "database/"
FILES_PREFIX = "files/"
SQLITE_MEMBER = "database/homeserver.db.gz"
POSTGRESQL_MEMBER = "database/matrix_synapse.pgdump"
CHUNK = 1 << 20
# Owners a restored file may get; anything else becomes root's.
KNOWN_OWNERS = ("root", "matrix-synapse", "turnserver", "www-data")


@dataclass
class Manifest:
    """What an archive holds, written last into it."""

    server_name: str
    engine: str  # "sqlite" or "postgresql"
    created: str  # UTC, ISO 8601
    media_path: str
    signing_key_path: str
    counts: dict[str, int]
    database_bytes: int = 0  # the database copy's size once unpacked
    sqlite_path: str = ""  # where Synapse's SQLite database was (engine sqlite)
    versions: dict[str, str] = field(default_factory=dict)
    # member name -> {"sha256": hex, "size": bytes}
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> bytes:
        return (json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, archive: Path) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise MatrixStackError(
                    f"{archive} has archive format {raw.get('format')!r}; this version reads "
                    f"format {FORMAT}"
                )
            return cls(**raw)
        except (ValueError, TypeError, AttributeError):
            raise MatrixStackError(f"{archive}: its manifest is not valid") from None

    @property
    def database_member(self) -> str:
        return SQLITE_MEMBER if self.engine == "sqlite" else POSTGRESQL_MEMBER


def copy_hashing(source: IO[bytes], target: IO[bytes] | None) -> tuple[str, int]:
    """Copy source to target (None: only read it); return its sha256 and size."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if target is not None:
            target.write(chunk)
    return digest.hexdigest(), size


class ArchiveWriter:
    """Add files to an open tar, recording each one's checksum for the manifest."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, dict[str, Any]] = {}
        self.bytes = 0

    def add_file(self, path: Path, name: str) -> None:
        """Add the regular file at path as member name, hashing it as it is written."""
        if not self._add_regular(path, name):
            raise MatrixStackError(f"{path} is not a regular file: not backed up")

    def _add_regular(self, path: Path, name: str, directory: int | None = None) -> bool:
        """Add path (a name in directory, a descriptor, when given) if it is a regular file;
        return whether it was.

        The file is opened first, without following a link, and described from that open
        file: a link its owner swaps in after the tree was walked is never followed.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            descriptor = os.open(path, flags, dir_fd=directory)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return False
            raise
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            return False
        with os.fdopen(descriptor, "rb") as stream:
            info = self.tar.gettarinfo(arcname=name, fileobj=stream)
            hashing = _HashingReader(stream)
            self.tar.addfile(info, hashing)
        if hashing.size != info.size:
            raise MatrixStackError(f"{path} changed size while it was being backed up")
        self.members[name] = {"sha256": hashing.digest.hexdigest(), "size": info.size}
        self.bytes += info.size
        return True

    def add_directory(self, name: str, status: os.stat_result) -> None:
        """Add a directory member described by status (taken from its open descriptor)."""
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = stat.S_IMODE(status.st_mode)
        info.uid, info.gid = status.st_uid, status.st_gid
        info.mtime = int(status.st_mtime)
        info.uname, info.gname = _account_names(status.st_uid, status.st_gid)
        self.tar.addfile(info)

    def add_tree(self, top: Path, progress: Callable[[str], None] | None = None) -> int:
        """Add top and everything under it (regular files and directories); return the files.

        The tree is Synapse's to change: walked by directory descriptors (os.fwalk, links
        not followed), each file opened in its own directory's descriptor, so a directory
        swapped for a link during the walk never leads the backup out of the tree.
        """
        count = 0
        real = _real_top(top)
        for directory, subdirectories, names, descriptor in os.fwalk(real):
            subdirectories.sort()
            here = top / Path(directory).relative_to(real)
            self.add_directory(files_member(here), os.fstat(descriptor))
            for name in sorted(names):
                if self._add_regular(Path(name), files_member(here / name), descriptor):
                    count += 1
                    if progress is not None and count % 1000 == 0:
                        progress(f"  {count} files, {self.bytes // 2**20} MiB so far")
        return count

    def finish(self, manifest: Manifest) -> None:
        """Write the manifest as the last member."""
        manifest.members = self.members
        data = manifest.to_json()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mode = 0o600
        info.mtime = int(time.time())
        self.tar.addfile(info, io.BytesIO(data))


def _real_top(top: Path) -> Path:
    """Return the directory a tree's top stands for: itself, or where it links to when root
    made that link (an admin's media store on another disk). A link another account owns
    could have been planted by it, to have root's files backed up: refused."""
    try:
        status = top.lstat()
    except FileNotFoundError:
        return top
    if not stat.S_ISLNK(status.st_mode):
        return top
    if status.st_uid not in (0, os.geteuid()):
        raise MatrixStackError(
            f"{top} is a link made by uid {status.st_uid}, not root: not backed up; point "
            "Synapse at the directory itself"
        )
    return top.resolve()


def _account_names(uid: int, gid: int) -> tuple[str, str]:
    """Return the names of an owner and group, '' for a number without a name (as tarfile)."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = ""
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = ""
    return user, group


class _HashingReader:
    """A file wrapper that hashes what tarfile reads through it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk


def files_member(path: Path) -> str:
    """Return the member name of an absolute path."""
    return FILES_PREFIX + str(path).lstrip("/")


def member_path(name: str) -> Path:
    """Return the absolute path a files/ member stands for."""
    return Path("/") / name.removeprefix(FILES_PREFIX)


def check_name(name: str, archive: Path) -> None:
    """Refuse a member name that is absolute, climbs out, or is not ours."""
    pure = PurePosixPath(name)
    if (
        pure.is_absolute()
        or ".." in pure.parts
        or "\\" in name
        or not (name == MANIFEST or name.startswith((DATABASE_PREFIX, FILES_PREFIX)))
    ):
        raise MatrixStackError(f"{archive}: unexpected member {name!r}; not a matrix-stack backup")


def open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:")
    except (OSError, tarfile.TarError) as error:
        raise MatrixStackError(f"cannot read {archive}: {error}") from None


def read_manifest(archive: Path) -> Manifest:
    """Return the archive's manifest (the last member) without checking the other members."""
    with open_archive(archive) as tar:
        try:
            member = tar.getmember(MANIFEST)
            stream = tar.extractfile(member)
        except (KeyError, tarfile.TarError, OSError):
            raise MatrixStackError(
                f"{archive} has no manifest: not a matrix-stack backup, or cut short"
            ) from None
        if stream is None:
            raise MatrixStackError(f"{archive}: its manifest is not a file")
        return Manifest.from_json(stream.read(), archive)


def verify(archive: Path, progress: Callable[[str], None] | None = None) -> Manifest:
    """Check every member against the manifest; return it. Changes nothing."""
    manifest = read_manifest(archive)
    seen: set[str] = set()
    try:
        with open_archive(archive) as tar:
            for member in tar:
                name = member.name.rstrip("/")
                check_name(name, archive)
                if name == MANIFEST:
                    continue
                if member.isdir():
                    continue
                if not member.isfile():
                    raise MatrixStackError(
                        f"{archive}: {name} is not a regular file; not a matrix-stack backup"
                    )
                expected = manifest.members.get(name)
                if expected is None:
                    raise MatrixStackError(f"{archive}: {name} is not in the manifest")
                stream = tar.extractfile(member)
                assert stream is not None
                digest, size = copy_hashing(stream, None)
                if digest != expected.get("sha256") or size != expected.get("size"):
                    raise MatrixStackError(
                        f"{archive}: {name} does not match its checksum: the archive is corrupt"
                    )
                seen.add(name)
    except (OSError, tarfile.TarError, EOFError) as error:
        raise MatrixStackError(f"{archive} is damaged: {error}") from None
    missing = sorted(set(manifest.members) - seen)
    if missing:
        raise MatrixStackError(f"{archive}: {missing[0]} is missing: the archive is incomplete")
    if manifest.database_member not in seen:
        raise MatrixStackError(f"{archive} holds no database copy")
    if progress is not None:
        total = sum(int(entry["size"]) for entry in manifest.members.values())
        progress(f"archive verified: {len(seen)} files, {total // 2**20} MiB, checksums match")
    return manifest
