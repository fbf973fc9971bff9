"""matrix-stack-admin adopt: take over a server set up by hand (the wiki recipe)."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any

SUMMARY = "take over a server set up by hand with the recipe (--dry-run: say what first)"


def add_commands(commands: Any) -> None:
    """Register the adopt command on the top-level subparsers."""
    adopt = commands.add_parser(
        "adopt",
        help=SUMMARY,
        description="Read what a Synapse, coturn and Apache set up by hand have (Synapse's "
        "homeserver.yaml and conf.d, /etc/turnserver.conf, the enabled Apache sites) and take "
        "it over: the server name, the database where it is, the signing key and media where "
        "they are, the secrets written inline (moved to /etc/matrix-stack/secrets/ with the "
        "same values), the federation partners (allow-list), the TURN domain and shared "
        "secret. Synapse then listens on 127.0.0.1:8008 only, behind Apache; coturn runs "
        "matrix-stack's configuration with the denied-peer list; an Element site answering "
        "for a name of the stack is disabled. homeserver.yaml, /etc/turnserver.conf and "
        "/var/www are never edited. The first configuration of the package (apt install) "
        "does this itself; this command does it for a server whose first configuration "
        "failed, and --dry-run says what it does.",
        epilog="A server that cannot be taken over safely (an unreadable configuration, a "
        "database holding users of another server name, a local PostgreSQL database other "
        "than matrix_synapse) is refused with the reason and nothing is changed. Purge gives "
        "the hand-made configuration back and never removes the database, key or media.",
    )
    adopt.add_argument("--dry-run", action="store_true",
                       help="list what would be taken over and what would change; change nothing")
    adopt.set_defaults(handler=run_adopt)


def run_adopt(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import MatrixStackError, ensure_root
    from matrix_stack.base.paths import STACK_PATH
    from matrix_stack.features import adopt

    managed = STACK_PATH.exists()
    if arguments.dry_run:
        plan = adopt.take_over_plan()
        if plan.empty:
            print("nothing to take over: Synapse's configuration has nothing made by hand")
            return 0
        if managed:
            print(f"already taken over ({STACK_PATH} exists); what the server had by hand:")
        for line in plan.lines:
            print(line)
        return 0
    ensure_root()
    if managed:
        raise MatrixStackError(
            f"this server is already run by matrix-stack ({STACK_PATH} exists): change "
            "settings with dpkg-reconfigure matrix-stack or stack.yaml and apply"
        )
    for line in adopt.take_over():
        print(line)
    return 0
