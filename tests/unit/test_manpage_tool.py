"""tools/manpage.py: roff escaping, any argparse tree to SYNOPSIS and COMMANDS, the date."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tools import manpage


def toy_parser() -> argparse.ArgumentParser:
    """Return a tree unlike matrix-stack-admin's: three levels, groups, every nargs."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--verbose", action="store_true", help="say more")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    backup = commands.add_parser("backup", help="make a backup")
    backup.add_argument("target", metavar="DIR", nargs="?", help="where to; default .")
    kind = backup.add_mutually_exclusive_group()
    kind.add_argument("--full", action="store_true", help="everything")
    kind.add_argument("--incremental", action="store_true", help="changes only")
    backup.add_argument("--keep", metavar="N", type=int, help="keep %(metavar)s backups")
    remote = commands.add_parser("remote", help="remote copies",
                                 description="Copies kept elsewhere.")
    remotes = remote.add_subparsers(dest="remote_command", metavar="ACTION", required=True)
    push = remotes.add_parser("push", help="send them", epilog="Needs a network.")
    push.add_argument("hosts", metavar="HOST", nargs="+", help="a host name")
    push.add_argument("--mode", choices=("fast", "safe"), required=True, help="how to send")
    return parser


def child(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for word in path:
        parser = next(found for name, found, _ in manpage.subcommands(parser) if name == word)
    return parser


def test_escape_protects_backslashes_minus_signs_and_non_ascii() -> None:
    assert manpage.escape("--a\\b \u2713") == "\\-\\-a\\eb \\[u2713]"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (".well-known  and\n--json", "\\&.well\\-known and \\fB\\-\\-json\\fR"),
        ("'quoted' text", "\\&'quoted' text"),
        ("kill --signal=USR2 x-y", "kill \\fB\\-\\-signal\\fR=USR2 x\\-y"),
    ],
)
def test_text_line_bolds_options_and_protects_a_leading_dot_or_quote(text: str, line: str) -> None:
    assert manpage.text_line(text) == line


def test_usage_shows_a_mutually_exclusive_group_as_alternatives_in_brackets() -> None:
    assert manpage.format_usage(child(toy_parser(), "backup")) == (
        "[\\fIDIR\\fR] [\\fB\\-\\-full\\fR\\ |\\ \\fB\\-\\-incremental\\fR] "
        "[\\fB\\-\\-keep\\fR\\ \\fIN\\fR]"
    )


def test_usage_shows_repeated_positionals_and_required_choices_unbracketed() -> None:
    assert manpage.format_usage(child(toy_parser(), "remote", "push")) == (
        "\\fIHOST\\fR ... \\fB\\-\\-mode\\fR\\ \\fBfast\\fR | \\fBsafe\\fR"
    )


def test_synopsis_has_the_program_line_and_one_line_per_runnable_command() -> None:
    assert manpage.render_synopsis(toy_parser(), "tool").splitlines() == [
        ".PD 0",
        ".SY tool", "[\\fB\\-\\-verbose\\fR] \\fICOMMAND\\fR ...", ".YS",
        ".SY tool", "\\fBbackup\\fR " + manpage.format_usage(child(toy_parser(), "backup")),
        ".YS",
        ".SY tool", "\\fBremote push\\fR \\fIHOST\\fR ... \\fB\\-\\-mode\\fR\\ \\fBfast\\fR | "
        "\\fBsafe\\fR", ".YS",
        ".PD",
    ]


def test_commands_nest_every_level_with_its_description_else_its_help() -> None:
    assert manpage.render_commands(toy_parser()).splitlines() == [
        ".SS backup",
        "make a backup",
        ".TP", "\\fIDIR\\fR", "where to; default .",
        ".TP", "\\fB\\-\\-full\\fR", "everything",
        ".TP", "\\fB\\-\\-incremental\\fR", "changes only",
        ".TP", "\\fB\\-\\-keep\\fR \\fIN\\fR", "keep N backups",
        ".SS remote",
        "Copies kept elsewhere.",
        ".TP", "\\fBremote push\\fR \\fIHOST\\fR ...",
        "send them",
        ".IP", "Needs a network.",
        ".RS",
        ".TP", "\\fIHOST\\fR", "a host name",
        ".TP", "\\fB\\-\\-mode\\fR \\fBfast\\fR | \\fBsafe\\fR", "how to send",
        ".RE",
    ]


def test_render_page_fills_every_placeholder() -> None:
    template = '.TH TOOL 1 "@DATE@" "tool @VERSION@"\n.SH SYNOPSIS\n@SYNOPSIS@\n' \
        ".SH COMMANDS\n@COMMANDS@\n.SH OPTIONS\n@OPTIONS@\n"
    page = manpage.render_page(toy_parser(), template, "2026-11-27", "1.0")

    assert page.startswith('.TH TOOL 1 "2026-11-27" "tool 1.0"\n')
    assert ".SH OPTIONS\n.TP\n\\fB\\-h\\fR, \\fB\\-\\-help\\fR\n" in page
    assert manpage.PLACEHOLDER.search(page) is None


def test_an_unknown_placeholder_stops_the_build() -> None:
    with pytest.raises(SystemExit, match="unknown placeholder @SEEALSO@"):
        manpage.render_page(toy_parser(), "@SEEALSO@\n", "2026-11-27", "1.0")


def test_page_date_is_source_date_epochs_in_utc() -> None:
    assert manpage.page_date({"SOURCE_DATE_EPOCH": "1795823999"}) == "2026-11-27"


def test_page_date_without_source_date_epoch_is_the_latest_changelog_entrys(
    tmp_path: Path,
) -> None:
    changelog = tmp_path / "changelog"
    changelog.write_text(
        "tool (1.1) unstable; urgency=medium\n\n  * Two.\n\n"
        " -- Someone <someone@example.org>  Fri, 27 Nov 2026 23:30:00 -0200\n\n"
        "tool (1.0) unstable; urgency=medium\n\n  * One.\n\n"
        " -- Someone <someone@example.org>  Mon, 02 Feb 2026 10:00:00 +0000\n"
    )

    assert manpage.page_date({}, changelog) == "2026-11-28"
