"""Files as they were before a change, to put back exactly when the change fails.

certbot's Reverter keeps checkpoints on disk; these files are small, so their bytes, mode and
owner are kept in memory and written back only where the file on disk differs.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.files import host_path, replace_file


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
    """Return the file at the absolute target path as it is now."""
    target = host_path(path, root)
    try:
        status = target.lstat()
    except FileNotFoundError:
        return Saved(path, None)
    mode, uid, gid = stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid
    if stat.S_ISLNK(status.st_mode):
        return Saved(path, b"", os.readlink(target), mode, uid, gid)
    return Saved(path, target.read_bytes(), None, mode, uid, gid)


def put_back(saved: Saved, root: Path) -> bool:
    """Make the file what it was when saved; return whether it had to change."""
    if save(saved.path, root) == saved:
        return False
    target = host_path(saved.path, root)
    if saved.data is None:
        target.unlink()
    elif saved.link is not None:
        aside = target.with_name(f".{target.name}.undo")
        aside.unlink(missing_ok=True)
        os.symlink(saved.link, aside)
        os.replace(aside, target)
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
