"""Local user names for bash completion: a root-only cache the user commands keep current.

Completing means asking nobody: the completion reads this file when it can (a root shell),
and offers nothing otherwise, so no account name is shown to whoever may not read it.
Keeping it is best effort: a cache that cannot be written never fails a command.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matrix_stack.paths import USER_NAMES_PATH as CACHE_PATH


def existing_user_argument(parser: Any, help_text: str) -> None:
    """Add the NAME positional of a command about an existing user (completed from the cache)."""
    action = parser.add_argument("name", metavar="NAME", help=help_text)
    action.completes_users = True


def read(path: Path = CACHE_PATH) -> set[str]:
    try:
        return set(path.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError):
        return set()


def remember(names: Iterable[str], path: Path = CACHE_PATH) -> None:
    """Replace the cache with names (localparts), root only (0600)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write("".join(f"{name}\n" for name in sorted(set(names))))
        os.replace(temporary, path)
    except OSError:
        return


def update(*, add: str | None = None, remove: str | None = None, path: Path = CACHE_PATH) -> None:
    """Add or remove one name, if the cache exists (a full user list makes it)."""
    if not path.exists():
        return
    names = read(path)
    if add:
        names.add(add)
    if remove:
        names.discard(remove)
    remember(names, path)
