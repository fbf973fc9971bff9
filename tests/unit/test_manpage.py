"""matrix-stack-admin(8), generated from the argparse tree, and --help say the same."""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from matrix_stack.cli.main import build_parser
from tools import manpage

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "doc" / "matrix-stack-admin.8.in"
EPOCH = "1795770000"  # 2026-11-27 UTC


@functools.cache
def generated_page() -> str:
    """Return the page as debian/rules generates it."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "manpage.py")],
        env={"PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": EPOCH},
        capture_output=True, text=True, check=True,
    )
    return result.stdout


def plain(roff: str) -> str:
    """Return roff text without its escapes and font changes."""
    text = re.sub(r"\\f[BIRP]|\\&", "", roff).replace("\\-", "-").replace("\\ ", " ")
    text = re.sub(r"\\\[u([0-9A-F]{4})\]", lambda match: chr(int(match.group(1), 16)), text)
    return text.replace("\\e", "\\")


def section(name: str) -> list[str]:
    """Return the roff lines of one section of the generated page."""
    text = generated_page().split(f"\n.SH {name}\n", 1)[1]
    return text.split("\n.SH ", 1)[0].splitlines()


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """Return every command path ("user add") with its option strings."""
    found: dict[str, list[str]] = {}
    if prefix:
        found[prefix] = [
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        ]
    for name, child, _ in manpage.subcommands(parser):
        found.update(commands(child, f"{prefix} {name}".strip()))
    return found


def entries() -> dict[str, set[str]]:
    """Return each command of the COMMANDS section with the options its entry lists."""
    found: dict[str, set[str]] = {}
    current = ""
    lines = section("COMMANDS")
    for index, line in enumerate(lines):
        if line.startswith(".SS "):
            current = plain(line[4:])
        elif index and lines[index - 1] == ".TP" and line.startswith("\\fB"):
            label = plain(line)
            if label.startswith("-"):
                found[current] |= {word.split()[0] for word in label.split(", ")}
                continue
            current = max((path for path in COMMANDS if f"{label} ".startswith(f"{path} ")),
                          key=len)
        else:
            continue
        found[current] = set()
    return found


def parser_of(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command.split():
        parser = next(child for name, child, _ in manpage.subcommands(parser) if name == word)
    return parser


COMMANDS = commands(build_parser())


def test_the_parser_has_the_commands_of_the_design() -> None:
    assert {"apply", "user add", "user list", "user deactivate", "passwd"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_an_entry_listing_exactly_its_options(command: str) -> None:
    assert entries()[command] == set(COMMANDS[command])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_in_its_parents_help(command: str) -> None:
    *parent, name = command.split()
    assert re.search(rf"^\s+{re.escape(name)}\b", parser_of(" ".join(parent)).format_help(),
                     re.M)


@pytest.mark.parametrize(
    "command", sorted(path for path in COMMANDS
                      if not any(True for _ in manpage.subcommands(parser_of(path))))
)
def test_every_runnable_command_has_a_synopsis_line_with_its_options(command: str) -> None:
    lines = section("SYNOPSIS")
    usages = [plain(line) for before, line in zip(lines, lines[1:], strict=False)
              if before.startswith(".SY ")]
    usage = next(usage for usage in usages if f"{usage} ".startswith(f"{command} "))
    assert set(re.findall(r"--[a-z-]+", usage)) == set(COMMANDS[command])


@pytest.mark.parametrize(
    ("command", "option"),
    sorted((command, option) for command, options in COMMANDS.items() for option in options),
)
def test_every_option_is_in_the_commands_help(command: str, option: str) -> None:
    assert option in parser_of(command).format_help()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_description_and_epilog_is_in_the_page(command: str) -> None:
    parser = parser_of(command)
    page = " ".join(plain(generated_page()).split())
    for text in (parser.description, parser.epilog):
        assert text is None or " ".join(text.split()) in page


def test_every_placeholder_of_the_template_is_replaced() -> None:
    template = TEMPLATE.read_text(encoding="utf-8")

    assert set(manpage.PLACEHOLDER.findall(template)) == {
        "DATE", "VERSION", "SYNOPSIS", "COMMANDS", "OPTIONS"
    }
    assert manpage.PLACEHOLDER.search(generated_page()) is None
    assert '.TH MATRIX-STACK-ADMIN 8 "2026-11-27" "matrix-stack 0.1.0"' in generated_page()


def test_the_global_options_are_in_the_options_section() -> None:
    labels = {plain(line) for line in section("OPTIONS") if line.startswith("\\fB")}
    assert labels == {"-h, --help", "--version"}


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_formats_the_page_without_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "matrix-stack-admin.8"
    path.write_text(generated_page())
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                            capture_output=True, text=True, check=True)
    assert result.stderr == ""


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
def test_man_formats_the_page_without_a_warning_as_lintian_runs_it(tmp_path: Path) -> None:
    path = tmp_path / "matrix-stack-admin.8"
    path.write_text(generated_page())
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(path)],
        env={**os.environ, "LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80"},
        capture_output=True, text=True, check=True,
    )
    assert result.stderr == ""


def test_debian_installs_the_generated_page() -> None:
    manpages = (ROOT / "debian" / "matrix-stack.manpages").read_text().split()
    rules = (ROOT / "debian" / "rules").read_text()

    assert manpages == ["debian/generated/matrix-stack-admin.8", "doc/matrix-stack.7"]
    assert "tools/manpage.py > debian/generated/matrix-stack-admin.8" in rules
    assert not (ROOT / "doc" / "matrix-stack-admin.8").exists()
