"""argparse's parser for matrix-stack-admin, with a formatter that does not import shutil."""

from __future__ import annotations

import argparse

from matrix_stack.cli.help_cache import terminal_columns

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own formatter, as wide as argparse would make it (the terminal's width).

    argparse asks shutil.get_terminal_size() for every formatter it makes, and shutil imports
    bz2, lzma and fnmatch: a sixth of what --help costs.
    """

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
        width: int | None = None, **options: Any,
    ) -> None:
        width = terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width, **options)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the formatter above; its subcommands get the same class."""

    # While a list (help_cache's miss on a command's --help), --help appends the parser's
    # prog and help text to it instead of printing them (argparse's help action then exits).
    kept_help: list[tuple[str, str]] | None = None

    def __init__(self, *arguments: Any, **options: Any) -> None:
        options.setdefault("formatter_class", HelpFormatter)
        super().__init__(*arguments, **options)

    def print_help(self, file: Any = None) -> None:
        if ArgumentParser.kept_help is not None and file is None:
            ArgumentParser.kept_help.append((self.prog, self.format_help()))
            return
        super().print_help(file)
