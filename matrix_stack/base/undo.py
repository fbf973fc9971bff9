"""Files as they were before a change, to put back exactly when the change fails.

certbot's Reverter keeps checkpoints on disk; these files are small, so their bytes, mode and
owner are kept in memory and written back only where the file on disk differs.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import (
    host_path,
    opened_directory,
    remove_file,
    replace_file,
    replace_link,
)

# Never block on a FIFO planted where a file is expected; never follow a link.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Saved:
    """One file as it was: bytes (a link: its target), mode and owner; data None: absent."""

    path: Path
    data: bytes | None
    link: str | None = None
    mode: int = 0
    uid: int = 0
    gid: int = 0


def save(path: Path, root: Path) -> Saved:
    """Return the file at the absolute target path as it is now.

    Read through its directory's descriptor and with O_NOFOLLOW, so what is saved is that
    file (or that link), never what a link planted in a service's directory points to."""
    target = host_path(path, root)
    try:
        with opened_directory(target.parent) as directory:
            try:
                descriptor = os.open(target.name, READ_FLAGS, dir_fd=directory)
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                status = os.stat(target.name, dir_fd=directory, follow_symlinks=False)
                link = os.readlink(target.name, dir_fd=directory)
                return Saved(path, b"", link, stat.S_IMODE(status.st_mode), status.st_uid,
                             status.st_gid)
    except FileNotFoundError:
        return Saved(path, None)
    with os.fdopen(descriptor, "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise MatrixStackError(f"{target} is not a regular file")
        data = stream.read()
    return Saved(path, data, None, stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid)


def put_back(saved: Saved, root: Path) -> bool:
    """Make the file what it was when saved; return whether it had to change."""
    if save(saved.path, root) == saved:
        return False
    target = host_path(saved.path, root)
    if saved.data is None:
        remove_file(target)
    elif saved.link is not None:
        replace_link(target, saved.link)
    else:
        replace_file(target, saved.data, saved.mode, (saved.uid, saved.gid))
    return True


class Undo:
    """The files a change may write, saved before it writes them (the first save counts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.saved: dict[Path, Saved] = {}

    def save(self, *paths: Path) -> None:
        for path in paths:
            if path not in self.saved:
                self.saved[path] = save(path, self.root)

    def put_back(self) -> tuple[list[Path], dict[Path, str]]:
        """Put every saved file back, last saved first.

        Return the files that had changed, and why each file that could not be put back could
        not (the others are put back all the same).
        """
        changed: list[Path] = []
        failures: dict[Path, str] = {}
        for saved in reversed(self.saved.values()):
            try:
                if put_back(saved, self.root):
                    changed.append(saved.path)
            except OSError as error:
                failures[saved.path] = str(error.strerror or error)
        return changed, failures


def describe_problems(problems: dict[Path, str]) -> str:
    """Return the files that could not be put back, with why, as one error line shows them."""
    return ", ".join(f"{path} ({reason})" for path, reason in problems.items())
