"""Local user names for bash completion: a root-only cache the user commands keep current.

Completing means asking nobody: the completion reads this file when it can (a root shell),
and offers nothing otherwise, so no account name is shown to whoever may not read it.
Keeping it is best effort: a cache that cannot be written never fails a command.
"""

from __future__ import annotations

TYPE_CHECKING = False  # what only type checking needs is not imported by the command line
if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path
    from typing import Any


def cache_path() -> Path:
    from matrix_stack.base.paths import USER_NAMES_PATH

    return USER_NAMES_PATH


def existing_user_argument(parser: Any, help_text: str) -> None:
    """Add the NAME positional of a command about an existing user (completed from the cache)."""
    action = parser.add_argument("name", metavar="NAME", help=help_text)
    action.completes_users = True


def read(path: Path | None = None) -> set[str]:
    path = path or cache_path()
    try:
        return set(path.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError):
        return set()


def remember(names: Iterable[str], path: Path | None = None) -> None:
    """Replace the cache with names (localparts), root only (0600)."""
    from matrix_stack.base.small_files import replace_small_file

    path = path or cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_small_file(str(path), "".join(f"{name}\n" for name in sorted(set(names))), 0o600)
    except OSError:
        return


def update(
    *, add: str | None = None, remove: str | None = None, path: Path | None = None
) -> None:
    """Add or remove one name, if the cache exists (a full user list makes it)."""
    path = path or cache_path()
    if not path.exists():
        return
    names = read(path)
    if add:
        names.add(add)
    if remove:
        names.discard(remove)
    remember(names, path)
