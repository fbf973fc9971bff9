"""Element release tarballs: version order, and unpacking that cannot write outside the tree.

Every member is checked before anything is written: names stay inside one top directory
element-vX.Y.Z/, links resolve inside it, only files, directories and links are allowed.
Python's tarfile "data" filter, where this Python has it, then checks again while extracting.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from matrix_stack.base.errors import MatrixStackError

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:-rc\.?(\d+))?")
_TOP_DIRECTORY = re.compile(r"element-v(\d+\.\d+\.\d+(?:-rc\.?\d+)?)")


class _NoFilterError(Exception):
    """Stands in for tarfile.FilterError where this Python has no extraction filters."""


# Raised by the "data" filter (Python 3.12, 3.11.4); older ones never raise it.
_FILTER_ERROR: type[Exception] = getattr(tarfile, "FilterError", _NoFilterError)
MAX_MEMBERS = 100_000
MAX_UNPACKED_BYTES = 1 << 30
_MAX_LINK_HOPS = 40


class ArchiveError(MatrixStackError):
    """A tarball is not a safe, complete Element release."""


def parse_version(text: str) -> tuple[int, int, int, int, int]:
    """Return a sort key for X.Y.Z or X.Y.Z-rc.N; a release sorts after its candidates."""
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an Element version: {text!r}")
    major, minor, patch, candidate = match.groups()
    if candidate is None:
        return (int(major), int(minor), int(patch), 1, 0)
    return (int(major), int(minor), int(patch), 0, int(candidate))


def is_version(text: str) -> bool:
    """Return whether text is an Element version (a leading v allowed)."""
    return _VERSION.fullmatch(text.strip()) is not None


def highest_version(candidates: list[str], *, releases_only: bool = True) -> str | None:
    """Return the highest of the versions (without v), candidates left out unless asked."""
    versions = {text.strip().removeprefix("v") for text in candidates if is_version(text)}
    if releases_only:
        versions = {version for version in versions if "-rc" not in version}
    return max(versions, key=parse_version, default=None)


@dataclass(frozen=True)
class Release:
    """An unpacked Element release: its version and its directory."""

    version: str
    path: Path


def _inside(name: str, top: str, links: dict[str, str]) -> str | None:
    """Return the archive path name leads to, following the archive's symlinks, or None."""
    resolved: list[str] = []
    pending = name.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        target = links.get("/".join(resolved))
        if target is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or target.startswith("/"):
                return None
            resolved.pop()
            pending = target.split("/") + pending
    path = "/".join(resolved)
    return path if path == top or path.startswith(top + "/") else None


def check_members(members: list[tarfile.TarInfo]) -> str:
    """Return the release's top directory name, or raise ArchiveError naming the bad member."""
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(f"the tarball has more than {MAX_MEMBERS} members")
    if sum(member.size for member in members) > MAX_UNPACKED_BYTES:
        raise ArchiveError("the tarball unpacks to more than 1 GiB")
    names: dict[str, tarfile.TarInfo] = {}
    for member in members:
        name = member.name
        if name.startswith("/") or re.match(r"[A-Za-z]:", name):
            raise ArchiveError(f"member {name} has an absolute path")
        if ".." in PurePosixPath(name).parts:
            raise ArchiveError(f"member {name} leads outside the release directory (..)")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise ArchiveError(f"member {name} is a device, FIFO or other special file")
        normal = str(PurePosixPath(name))
        if normal in names and not (member.isdir() and names[normal].isdir()):
            raise ArchiveError(f"member {name} appears twice")
        names[normal] = member
    tops = {(PurePosixPath(name).parts or ("",))[0] for name in names}
    top = tops.pop() if len(tops) == 1 else ""
    if tops or not _TOP_DIRECTORY.fullmatch(top):
        raise ArchiveError(
            "the tarball does not hold one element-vX.Y.Z/ directory, as Element releases do"
        )
    links = {name: member.linkname for name, member in names.items() if member.issym()}
    for name, member in names.items():
        for parent in PurePosixPath(name).parents:
            if str(parent) in links:
                raise ArchiveError(f"member {name} is written through the symlink {parent}")
        if member.issym():
            target = str(PurePosixPath(name).parent / member.linkname)
            if member.linkname.startswith("/") or _inside(target, top, links) is None:
                raise ArchiveError(
                    f"symlink {name} -> {member.linkname} leads outside the release directory"
                )
        if member.islnk():
            source = _inside(member.linkname, top, links)
            if source is None or not names.get(source, member).isfile():
                raise ArchiveError(
                    f"hard link {name} -> {member.linkname} leads outside the release directory"
                )
    return top


def _normalise(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Give a member root's ownership and the modes Element is served with (0755, 0644)."""
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    if member.isdir():
        member.mode = 0o755
    elif not member.issym():
        member.mode = 0o644
    return member


def unpack_release(tarball: Path, destination: Path, expected: str | None = None) -> Release:
    """Unpack a checked release tarball into destination (an empty directory of ours)."""
    try:
        with tarfile.open(tarball, "r:*") as archive:
            members = archive.getmembers()
            top = check_members(members)
            safe = [_normalise(member) for member in members]
            if hasattr(tarfile, "data_filter"):
                archive.extractall(destination, members=safe, filter="data")
            else:  # Python before 3.11.4: check_members above is the whole protection
                archive.extractall(destination, members=safe)
    except _FILTER_ERROR as error:
        raise ArchiveError(f"unsafe member refused: {error}") from None
    except (tarfile.TarError, EOFError, OSError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise ArchiveError(f"{tarball.name} is not a readable tar.gz ({reason})") from None
    return check_release(destination / top, expected)


def check_release(path: Path, expected: str | None = None) -> Release:
    """Return the release in path, or raise ArchiveError if it is not an Element build."""
    version_file, index = path / "version", path / "index.html"
    if index.is_symlink() or not index.is_file():
        raise ArchiveError(f"{path.name}/index.html is missing: not an Element web release")
    if version_file.is_symlink() or not version_file.is_file():
        raise ArchiveError(f"{path.name}/version is missing: not an Element web release")
    version = version_file.read_text(encoding="utf-8", errors="replace").strip().removeprefix("v")
    named = path.name.removeprefix("element-v")
    if version != named:
        raise ArchiveError(f"{path.name}/version says {version[:40]!r}, not {named}")
    if expected is not None and version != expected:
        raise ArchiveError(f"the tarball holds Element {version}, not the requested {expected}")
    for directory, subdirectories, file_names in os.walk(path):
        for name in subdirectories + file_names:
            full = os.path.join(directory, name)
            if not os.path.islink(full):
                os.chmod(full, 0o755 if name in subdirectories else 0o644)
    os.chmod(path, 0o755)
    return Release(version, path)
