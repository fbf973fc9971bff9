"""matrix-stack-admin: the administrator's command line (see matrix-stack-admin(8))."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from matrix_stack import __version__
from matrix_stack.errors import MatrixStackError

PROGRAM = "matrix-stack-admin"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Administer the Matrix stack set up by the matrix-stack package.",
        epilog="Exit status: 0 success, 1 the operation failed, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    apply_parser = commands.add_parser(
        "apply",
        help="re-render from /etc/matrix-stack/stack.yaml, restart only what changed",
        description="Render every generated file from /etc/matrix-stack/stack.yaml, check it "
        "with Synapse and apache2ctl configtest, write what changed and restart only the "
        "services whose configuration changed. A refused configuration leaves the previous "
        "files live.",
    )
    apply_parser.add_argument(
        "--dry-run", action="store_true", help="show the changes as a diff, change nothing"
    )
    apply_parser.set_defaults(handler=run_apply)

    from matrix_stack import cli_users

    cli_users.add_commands(commands)
    return parser


def run_apply(arguments: argparse.Namespace) -> int:
    from matrix_stack import answers
    from matrix_stack.apply import apply, diff, ensure_root

    ensure_root()
    settings = answers.load_settings(answers.read_stack(), str(answers.STACK_PATH))
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.handler(arguments))
    except MatrixStackError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 1
