"""matrix-stack-admin(8) and --help describe the same commands and options."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from matrix_stack.cli import build_parser

MANPAGE = Path(__file__).resolve().parents[2] / "doc" / "matrix-stack-admin.8"


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """Return every command path ("user add") with its option strings."""
    found: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(commands(child, f"{prefix} {name}".strip()))
    if prefix:
        found[prefix] = [
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        ]
    return found


def manpage_text() -> str:
    """Return the man page source with roff's escapes and font changes removed."""
    text = MANPAGE.read_text(encoding="utf-8").replace("\\-", "-")
    return re.sub(r"\\f[BIRP]", "", text)


COMMANDS = commands(build_parser())


def test_the_parser_has_the_commands_of_the_design() -> None:
    assert {"apply", "user add", "user list", "user deactivate", "passwd"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_in_the_manpage(command: str) -> None:
    words = command.split()
    pattern = r"\s+".join(re.escape(word) for word in words)
    assert re.search(rf"^\.B[IR]?\s+\"?{pattern}\b", manpage_text(), re.M), command


@pytest.mark.parametrize(
    ("command", "option"),
    sorted((command, option) for command, options in COMMANDS.items() for option in options),
)
def test_every_option_is_in_the_manpage_and_the_help(command: str, option: str) -> None:
    assert option in manpage_text()
    parser = build_parser()
    for word in command.split():
        parser = next(
            action.choices[word]
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        )
    assert option in parser.format_help()
