"""matrix-stack-admin --help without argparse: the text argparse printed, kept by root.

Importing argparse alone costs 1.7 times a bare Python's start-up (it imports re, enum,
functools, collections and gettext), so the top-level help is kept, as argparse formatted it,
in a file keyed on everything that text depends on: the Python and its argparse.py, the module
that builds the parser, the terminal's width, whether the output is a terminal (Python 3.14
colours help there) and the locale and colour variables. Any change makes a miss: argparse
formats the help again, and root keeps the new text. The cache is best effort: it never fails
the command, and nothing is kept where STATE_DIR does not exist (a source checkout).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# Under paths.STATE_DIR, which purge removes (paths imports pathlib: too slow for this).
STATE_DIR = "/var/lib/matrix-stack"
HELP_PATH = STATE_DIR + "/help-{columns}"
ENVIRONMENT = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG", "PYTHON_COLORS", "NO_COLOR",
               "FORCE_COLOR", "TERM")


def terminal_columns() -> int:
    """Return shutil.get_terminal_size().columns, what argparse formats help for."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def help_key(columns: int, sources: Sequence[str]) -> str:
    """Return one line naming everything the help text depends on; '' when it cannot tell."""
    import zlib  # built in

    checksums = []
    # By content: a package's files all have the same time (SOURCE_DATE_EPOCH).
    for path in (os.path.join(os.path.dirname(os.__file__), "argparse.py"), *sources):
        try:
            with open(path, "rb") as stream:
                checksums.append(zlib.crc32(stream.read()))
        except OSError:
            return ""
    return repr((
        sys.version, sys.flags.ignore_environment, columns, os.isatty(1),
        [os.environ.get(name) for name in ENVIRONMENT], checksums,
    ))


def cached_help(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as stream:
            kept_key, _, text = stream.read().partition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    return text if key and kept_key == key else None


def keep_help(path: str, key: str, text: str) -> None:
    """Write the key and text to path, atomically, when its directory exists and is ours."""
    directory = os.path.dirname(path)
    if not key or not os.path.isdir(directory) or os.stat(directory).st_uid != os.geteuid():
        return
    from matrix_stack.base.small_files import replace_small_file

    try:
        replace_small_file(path, f"{key}\n{text}", 0o644)
    except OSError:
        return


def print_help(
    columns: int, sources: Sequence[str], render: Callable[[], tuple[str, bool]],
    command: Sequence[str] = (),
) -> None:
    """Print the help of the command (words such as user add; none: the top level) as
    argparse would, then exit 0.

    sources are the files of the modules that make the parser; render formats the help and
    says whether it may be kept (the help of exactly that command).
    """
    key = help_key(columns, sources)
    path = HELP_PATH.format(columns=columns) + "".join(f".{word}" for word in command)
    text = cached_help(path, key)
    if text is None:
        text, keep = render()
        if keep:
            keep_help(path, key, text)
    # As argparse's print_help and exit; contextlib.suppress would import functools and more.
    try:  # noqa: SIM105
        sys.stdout.write(text)
    except (AttributeError, OSError):
        pass
    sys.exit(0)


def is_command_word(word: str) -> bool:
    """Return whether word could name a command: lower-case letters and digits, inner hyphens
    (without re, which costs the command line milliseconds)."""
    return bool(word) and word.strip("-") == word and all(
        "a" <= char <= "z" or "0" <= char <= "9" or char == "-" for char in word)
