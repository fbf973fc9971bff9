"""Write generated files: atomic, owner and mode before content, only when changed, via ucf.

The admin may edit any generated file. ucf remembers the checksum of the version we last
wrote; a file whose checksum differs was edited by the admin, so it is kept and the new
version is saved beside it as FILE.ucf-dist (ucf's own convention), never silently lost.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import grp
import hashlib
import os
import pwd
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.base.paths import UCF_STATE_PATH
from matrix_stack.base.run import run

PACKAGE = "matrix-stack"
DIST_SUFFIX = ".ucf-dist"


@dataclass(frozen=True)
class FileSpec:
    """A file to have on disk: absolute target path, text, mode and ownership."""

    path: Path
    text: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


class Outcome(enum.StrEnum):
    UNCHANGED = "unchanged"
    CREATED = "created"
    UPDATED = "updated"
    KEPT_LOCAL = "kept-local"  # the admin edited it: kept, new version in FILE.ucf-dist
    KEPT_DELETED = "kept-deleted"  # the admin deleted it: not recreated (ucf's rule)

    @property
    def changes_live_file(self) -> bool:
        return self in (Outcome.CREATED, Outcome.UPDATED)


@dataclass(frozen=True)
class Plan:
    """What writing one FileSpec would do, with the file's current text for diffs."""

    spec: FileSpec
    outcome: Outcome
    current: str | None


def host_path(path: Path, root: Path) -> Path:
    """Return where the absolute target path lives under root."""
    return root / path.relative_to("/")


def md5_text(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


class UcfState:
    """ucf's record of the checksums we last wrote, under root (tests use a temporary root)."""

    def __init__(self, root: Path = Path("/"), *, debconf_ok: bool = False) -> None:
        self.root = root
        self.state_dir = host_path(UCF_STATE_PATH, root)
        self.debconf_ok = debconf_ok
        self._hashes: dict[str, str] | None = None

    def registered_md5(self, path: Path) -> str | None:
        """Return the checksum ucf holds for the target path, if any."""
        if self._hashes is None:
            self._hashes = {}
            hashfile = read_text(self.state_dir / "hashfile") or ""
            for line in hashfile.splitlines():
                digest, _, name = line.partition("  ")
                if name:
                    self._hashes[name] = digest
        return self._hashes.get(str(host_path(path, self.root)))

    def register(self, spec: FileSpec) -> None:
        """Record the file now on disk as ours and as the version we wrote (ucf, ucfr)."""
        target = host_path(spec.path, self.root)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        options = ["--state-dir", str(self.state_dir)]
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", prefix="matrix-stack-") as new:
            new.write(spec.text)
            new.flush()
            # The target already holds exactly this text, so ucf only records its checksum.
            if self.debconf_ok:
                # ucf joins our debconf session: protocol in on stdin, out on fd 3.
                run(["ucf", "--debconf-ok", *options, new.name, str(target)], pass_fds=(3,))
            else:
                run(["ucf", *options, new.name, str(target)])
        run(["ucfr", *options, PACKAGE, str(target)])
        if self._hashes is not None:
            self._hashes[str(target)] = md5_text(spec.text)


    def forget(self, path: Path) -> None:
        """Drop a file matrix-stack no longer generates from ucf's records (ucf, ucfr)."""
        target = host_path(path, self.root)
        options = ["--state-dir", str(self.state_dir)]
        run(["ucf", "--purge", *options, str(target)])
        run(["ucfr", "--purge", *options, PACKAGE, str(target)])
        if self._hashes is not None:
            self._hashes.pop(str(target), None)


def plan_file(spec: FileSpec, root: Path, ucf: UcfState) -> Plan:
    """Return what writing spec would do, following ucf's rules for admin edits."""
    current = read_text(host_path(spec.path, root))
    registered = ucf.registered_md5(spec.path)
    if current is None:
        outcome = Outcome.KEPT_DELETED if registered else Outcome.CREATED
    elif current == spec.text:
        outcome = Outcome.UNCHANGED
    elif registered is None or md5_text(current) != registered:
        # Edited since we wrote it, or never ours (an admin's own file by that name): kept.
        outcome = Outcome.KEPT_LOCAL
    else:
        outcome = Outcome.UPDATED
    return Plan(spec, outcome, current)


def sets_ownership(root: Path) -> bool:
    """Return whether to chown: as root on the real system only.

    A temporary root (tests, image builds) has no matrix-synapse or turnserver account to
    give files to, and the host's accounts would be the wrong ones anyway.
    """
    return os.geteuid() == 0 and root == Path("/")


def lookup_ids(owner: str, group: str) -> tuple[int, int]:
    """Return the numeric owner and group, raising a one-line error if either is unknown."""
    from matrix_stack.base.errors import MatrixStackError

    try:
        uid = pwd.getpwnam(owner).pw_uid
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise MatrixStackError(
            f"user {owner} or group {group} does not exist; is its package installed?"
        ) from None
    return uid, gid


def create_exclusive(
    path: Path | str, uid: int, gid: int, mode: int, *, dir_fd: int | None = None
) -> int:
    """Create a new file, owner and mode set on its descriptor; return it open for writing.

    Never an existing file and never through a link at its name (O_EXCL, O_NOFOLLOW), so a
    link planted where root writes cannot hand root's powers to whoever planted it. A uid or
    gid of -1 leaves that one as created (the caller's).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(path, flags, 0o600, dir_fd=dir_fd)
    try:
        os.fchown(descriptor, uid, gid)
        os.fchmod(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        os.unlink(path, dir_fd=dir_fd)
        raise
    return descriptor


def write_atomic(spec: FileSpec, root: Path, *, text: str | None = None) -> None:
    """Replace the target with text (default spec.text): temp file, chown, chmod, fsync, rename.

    Ownership is set only as root on the real system (sets_ownership), so unit tests need
    neither root nor the services' accounts.
    """
    target = host_path(spec.path, root)
    ids = lookup_ids(spec.owner, spec.group) if sets_ownership(root) else None
    replace_file(target, (spec.text if text is None else text).encode("utf-8"), spec.mode, ids)


def replace_file(
    target: Path,
    data: bytes,
    mode: int,
    ids: tuple[int, int] | None,
    check: Callable[[Path], object] | None = None,
) -> None:
    """Replace target with data atomically: temp file beside it (made exclusively), chown
    (ids), chmod, fsync, check (given the temp file; raising keeps target as it was), rename,
    fsync of the directory. Missing directories are made (0755); the directory is reached by
    open_directory, so a link planted on the way cannot send the file elsewhere."""
    with opened_directory(target.parent, create=True) as directory:
        temporary = f".{target.name}.new-{secrets.token_hex(6)}"
        descriptor = create_exclusive(temporary, *(ids or (-1, -1)), mode, dir_fd=directory)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            if check is not None:
                check(target.parent / temporary)
            os.replace(temporary, target.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=directory)
            raise
        os.fsync(directory)


def remove_file(target: Path) -> bool:
    """Remove target (never what a link on the way points to); return whether it existed."""
    try:
        with opened_directory(target.parent) as directory:
            os.unlink(target.name, dir_fd=directory)
    except FileNotFoundError:
        return False
    return True


def replace_link(target: Path, destination: str) -> None:
    """Make target a symbolic link to destination, atomically (a link beside it, renamed)."""
    with opened_directory(target.parent, create=True) as directory:
        aside = f".{target.name}.link-{secrets.token_hex(6)}"
        os.symlink(destination, aside, dir_fd=directory)
        try:
            os.replace(aside, target.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            os.unlink(aside, dir_fd=directory)
            raise


# A path resolves through at most this many links, as the kernel's own limit.
MAX_LINKS = 40
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _follows_link(parent: os.stat_result, link: os.stat_result) -> bool:
    """Return whether a link may be followed: only another account could have planted it if
    its directory lets that account in (group/other writable, without a sticky bit that
    limits renames to the link's own owner)."""
    trusted = (0, os.geteuid())
    if parent.st_uid not in trusted:
        return False
    if parent.st_mode & 0o022 == 0:
        return True
    return bool(parent.st_mode & stat.S_ISVTX) and link.st_uid in trusted


def open_directory(path: Path, *, create: bool = False) -> int:
    """Open an absolute directory one component at a time from /, never through a link
    placed by an account other than root: such a link (in a directory that account can write,
    as /etc/matrix-synapse is Synapse's) makes this a one-line error. Links in root's own
    directories (a merged /usr, an admin's choice) are followed. With create, missing
    directories are made (0755, owned by the caller).

    Everything written through the returned descriptor lands in that very directory, even if
    its path is changed meanwhile.
    """
    from matrix_stack.base.errors import MatrixStackError

    if not path.is_absolute():
        raise ValueError(f"not an absolute path: {path}")
    pending = list(reversed(path.parts[1:]))
    current = os.open("/", DIRECTORY_FLAGS)
    where = Path("/")  # for messages: the directory current stands for
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            try:
                following = os.open(name, DIRECTORY_FLAGS, dir_fd=current)
            except FileNotFoundError:
                if not create or name == "..":
                    raise
                with suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=current)
                pending.append(name)
                continue
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                status = os.stat(name, dir_fd=current, follow_symlinks=False)
                if not stat.S_ISLNK(status.st_mode):
                    raise
                if not _follows_link(os.fstat(current), status):
                    raise MatrixStackError(
                        f"not writing under {path}: {where / name} is a link in a directory "
                        "another account can write; make it a directory owned by root"
                    ) from None
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
                destination = Path(os.readlink(name, dir_fd=current))
                pending.extend(reversed(destination.parts[1:] if destination.is_absolute()
                                        else destination.parts))
                if destination.is_absolute():
                    os.close(current)
                    current, where = os.open("/", DIRECTORY_FLAGS), Path("/")
                continue
            os.close(current)
            current, where = following, where.parent if name == ".." else where / name
    except BaseException:
        os.close(current)
        raise
    return current


@contextmanager
def opened_directory(path: Path, *, create: bool = False) -> Iterator[int]:
    """open_directory for the block; the descriptor is closed after it."""
    descriptor = open_directory(path, create=create)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def apply_plan(plan: Plan, root: Path) -> None:
    """Carry out a plan on disk; registration with ucf happens after validation."""
    if plan.outcome.changes_live_file:
        write_atomic(plan.spec, root)
    elif plan.outcome is Outcome.KEPT_LOCAL:
        dist = FileSpec(
            plan.spec.path.with_name(plan.spec.path.name + DIST_SUFFIX),
            plan.spec.text,
            plan.spec.mode,
            plan.spec.owner,
            plan.spec.group,
        )
        write_atomic(dist, root)


@contextmanager
def exclusive_lock(path: Path, busy: str) -> Iterator[None]:
    """Hold an flock on path for the block; raise busy (one line) if someone else holds it."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from matrix_stack.base.errors import MatrixStackError

            raise MatrixStackError(busy) from None
        yield
