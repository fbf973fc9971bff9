"""Small files the command line keeps for itself (caches), written without files.py's imports.

files.py writes configuration (ucf, owners, fsync); a cache needs only to be whole or absent,
and tempfile alone would cost a command 5 ms (it imports shutil, random and weakref).
"""

from __future__ import annotations

import os


def replace_small_file(path: str, text: str, mode: int) -> None:
    """Replace path with text, atomically, created with mode; raise OSError on failure."""
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.getpid()}"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             mode)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
