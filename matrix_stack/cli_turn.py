"""matrix-stack-admin turn credentials | test: what clients get from Synapse, and proof it works.

Both read the files the services themselves read: coturn's /etc/matrix-stack/turnserver.conf
and Synapse's merged configuration, so an edited file or a secret that went out of step shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def add_commands(commands: Any) -> None:
    """Register the turn command and its actions on the top-level subparsers."""
    turn = commands.add_parser("turn", help="TURN credentials and a self-test of coturn")
    actions = turn.add_subparsers(dest="turn_command", metavar="ACTION", required=True)

    credentials = actions.add_parser(
        "credentials",
        help="print TURN credentials exactly as Synapse hands them to a user",
        description="Print an ephemeral TURN username and password minted with Synapse's "
        "shared secret, as GET /_matrix/client/v3/voip/turnServer returns them, with their "
        "lifetime and the TURN URIs. Default user: matrix-stack-admin's service account.",
    )
    credentials.add_argument("--user", metavar="MXID", help="mint them for this user")
    credentials.add_argument("--json", action="store_true", help="print the endpoint's JSON")
    credentials.set_defaults(handler=run_credentials)

    test = actions.add_parser(
        "test",
        help="allocate a relay over UDP, TCP and TLS and check private peers are refused",
        description="Check coturn runs and shares Synapse's secret, make real TURN "
        "allocations with fresh credentials over UDP, TCP and TLS (5349), check that "
        "relaying to loopback and private addresses is refused (403), and print the DNS "
        "SRV records to publish. One line per step; exit status 1 if any step failed.",
    )
    test.set_defaults(handler=run_test)


def run_credentials(arguments: argparse.Namespace) -> int:
    from matrix_stack.apply import ensure_root
    from matrix_stack.synapse_api import parse_user
    from matrix_stack.turn_config import (
        address_warnings,
        credentials_for,
        default_user,
        load_turn_config,
    )

    ensure_root()
    config = load_turn_config()
    user = str(parse_user(arguments.user, config.server_name)) if arguments.user else None
    answer = credentials_for(config, user or default_user(config.server_name), time.time())
    if arguments.json:
        print(json.dumps(answer, indent=2))
        return 0
    for key in ("username", "password", "ttl"):
        print(f"{key}: {answer[key]}")
    print("uris: " + " ".join(answer["uris"]))
    for warning in address_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def run_test(arguments: argparse.Namespace) -> int:
    from matrix_stack.apply import ensure_root
    from matrix_stack.turn_check import coturn_running, run_checks
    from matrix_stack.turn_config import load_turn_config

    ensure_root()
    config = load_turn_config()
    return 0 if run_checks(config, running=coturn_running(), out=print) else 1
