"""matrix-stack-admin: the administrator's command line (see matrix-stack-admin(8))."""

from __future__ import annotations

import os
import sys

from matrix_stack import __version__
from matrix_stack.base.errors import MatrixStackError

# Start-up is most of what a command costs, so modules import only what they need at the top:
# typing, dataclasses, pathlib, json, urllib and the like cost milliseconds each. Names needed
# only for type checking sit under "TYPE_CHECKING = False" (importing typing for its own
# TYPE_CHECKING would cost what it saves), the rest inside the functions that use them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

PROGRAM = "matrix-stack-admin"


# The commands defined in other modules, in --help order, with their one-line help. Only the
# command being run is imported and built, so that start-up stays fast (test_cli checks these
# lines equal the modules' own).
COMMANDS: dict[str, tuple[str, str]] = {
    "user": ("cli.users", "add, list, deactivate accounts"),
    "passwd": ("cli.passwd", "set a user's password (online, or offline when Synapse is stopped)"),
    "token": ("cli.tokens", "registration tokens (registration mode token)"),
    "element": (
        "cli.element", "install, upgrade or roll back Element web (GPG-verified releases)"
    ),
    "turn": ("cli.turn", "TURN credentials and a self-test of coturn"),
    "federation": (
        "cli.federation", "which servers this one federates with, and a federation tester"
    ),
    "db": ("cli.db", "Synapse's database: move it from SQLite to PostgreSQL"),
    "backup": (
        "cli.backup",
        "write one archive with Synapse's database, media, signing key and configuration",
    ),
    "restore": ("cli.restore", "put a backup archive back (same server name only)"),
    "mail": ("cli.mail", "send a test message the way Synapse sends its mail"),
    "proxy-config": ("cli.proxy_config", "print a Traefik or HAProxy configuration for this stack"),
    "doctor": ("cli.doctor", "check the whole stack, one line per check"),
    "workers": ("cli.workers", "Synapse's worker processes: layout, state and load"),
    "adopt": (
        "cli.adopt", "take over a server set up by hand with the recipe (--dry-run: say what first)"
    ),
}


def selected_command(argv: Sequence[str]) -> str | None:
    """Return the command named on the command line, if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Return the parser: every command in full, or (given argv) only the one being run."""
    from matrix_stack.cli.argument_parser import ArgumentParser

    parser = ArgumentParser(
        prog=PROGRAM,
        description="Administer the Matrix stack set up by the matrix-stack package.",
        epilog="Exit status: 0 success, 1 the operation failed, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    apply_parser = commands.add_parser(
        "apply",
        help="re-render from /etc/matrix-stack/stack.yaml, restart only what changed",
        description="Render every generated file from /etc/matrix-stack/stack.yaml, check the "
        "result (Synapse loads the merged configuration; apache2ctl configtest), write what "
        "changed and restart only the services whose configuration changed. A configuration "
        "that Synapse or Apache refuses leaves the previous files in place and the command "
        "says what failed. A generated file you edited is kept: the new version is written "
        "beside it as FILE.ucf-dist, and apply says so.",
    )
    apply_parser.add_argument(
        "--dry-run", action="store_true",
        help="show the changes as a unified diff, change nothing",
    )
    apply_parser.set_defaults(handler=run_apply)

    wanted = None if argv is None else selected_command(argv)
    for name, (module, summary) in COMMANDS.items():
        if argv is None or name == wanted:
            __import__(f"matrix_stack.{module}", fromlist=["add_commands"]).add_commands(commands)
        else:
            commands.add_parser(name, help=summary)
    return parser


def run_apply(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.core.apply import apply, diff
    from matrix_stack.core.stack import current_settings

    ensure_root()
    settings = current_settings()
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    report = apply(settings, dry_run=arguments.dry_run)
    if arguments.dry_run:
        print(diff(report.plans), end="")
        return 0
    lines = report.lines()
    for line in lines:
        print(line)
    if not lines:
        print("nothing changed")
    return 0


def command_help(words: Sequence[str]) -> tuple[str, bool]:
    """Return the help argparse prints for words --help, and whether it is the help of exactly
    that command (user deactivate alice --help prints user deactivate's: not to be kept)."""
    from matrix_stack.cli.argument_parser import ArgumentParser

    if not words:
        return build_parser(["--help"]).format_help(), True
    kept: list[tuple[str, str]] = []
    ArgumentParser.kept_help = kept
    try:
        build_parser(words).parse_args([*words, "--help"])
    except SystemExit as done:
        if done.code:
            raise
    finally:
        ArgumentParser.kept_help = None
    prog, text = kept[0]
    return text, prog == " ".join((PROGRAM, *words))


def main(argv: Sequence[str] | None = None) -> int:
    arguments_given = sys.argv[1:] if argv is None else list(argv)
    words = arguments_given[:-1]
    if arguments_given[-1:] in (["--help"], ["-h"]) and len(words) <= 3:
        from matrix_stack.cli import help_cache

        if all(help_cache.is_command_word(word) for word in words):
            here = __file__.rpartition("/")[0]
            # A command's parser is made by its module and those it imports: all of cli/.
            sources = [f"{here}/{name}" for name in sorted(os.listdir(here))
                       if name.endswith(".py")] if words else [__file__,
                                                               f"{here}/argument_parser.py"]
            help_cache.print_help(help_cache.terminal_columns(), sources,
                                  lambda: command_help(words), words)
    parser = build_parser(arguments_given)
    arguments = parser.parse_args(arguments_given)
    try:
        return int(arguments.handler(arguments))
    except MatrixStackError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 1
