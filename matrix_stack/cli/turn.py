"""matrix-stack-admin turn credentials | test: what clients get from Synapse, and proof it works.

Both read the files the services themselves read: coturn's /etc/matrix-stack/turnserver.conf
and Synapse's merged configuration, so an edited file or a secret that went out of step shows.
"""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any


def add_commands(commands: Any) -> None:
    """Register the turn command and its actions on the top-level subparsers."""
    turn = commands.add_parser(
        "turn",
        help="TURN credentials and a self-test of coturn",
        description="coturn relays the media of voice and video calls that cannot go direct; "
        "Synapse hands its clients TURN credentials minted with a secret it shares with coturn.",
    )
    actions = turn.add_subparsers(dest="turn_command", metavar="ACTION", required=True)

    credentials = actions.add_parser(
        "credentials",
        help="print TURN credentials exactly as Synapse hands them to a user",
        description="Print an ephemeral TURN username and password exactly as Synapse's "
        "/_matrix/client/v3/voip/turnServer mints them (expiry:user, and the base64 HMAC-SHA1 "
        "of it with the shared secret Synapse reads through turn_shared_secret_path), their "
        "lifetime in seconds (ttl, one day) and the TURN URIs. They are for testing a client "
        "or a TURN tool by hand; anyone holding them may use the relay until they expire.",
    )
    credentials.add_argument(
        "--user", metavar="MXID", help="mint them for this user of this server (a name or "
        "@name:SERVER); default: the service account @matrix-stack:SERVER"
    )
    credentials.add_argument("--json", action="store_true",
                             help="print the endpoint's JSON instead of one line per field")
    credentials.set_defaults(handler=run_credentials)

    test = actions.add_parser(
        "test",
        help="allocate a relay over UDP, TCP and TLS and check private peers are refused",
        description="Prove that calls can be relayed, one line per step (\u2713 passed, "
        "\u2717 failed, ! warning), exit status 1 if any step failed: coturn runs; its "
        "static-auth-secret in /etc/matrix-stack/turnserver.conf is the secret Synapse hands "
        "out credentials with; a real TURN Allocate with freshly minted credentials succeeds "
        "over UDP and over TCP on port 3478 at the address coturn listens on; relaying to "
        "127.0.0.1 and to 10.0.0.1 is refused (403 Forbidden IP) and relaying to the server's "
        "own address is allowed; port 5349 serves the stack's certificate over TLS (verified "
        "for the TURN domain) and an Allocate succeeds there too. A warning says so when "
        "coturn announces a private address (RFC 1918 or CGNAT, detected from the default "
        "route): clients outside that network cannot reach it, and behind NAT the question "
        "matrix-stack/turn-external-ip needs the form PUBLIC/PRIVATE. Last, the DNS SRV "
        "records (_stun._udp, _turn._udp, _turns._tcp under the server name) that clients "
        "looking TURN up would use are printed. The client is matrix-stack's own (standard "
        "library only, RFC 5389 and 5766); the test credentials are valid for ten minutes and "
        "their allocations are released at once.",
        epilog="The firewall must let in 3478 (UDP and TCP), 5349 (TCP) and the relay ports "
        "49152-65535 (UDP). With tls: files coturn reads the administrator's certificate and "
        "key itself, as user turnserver: give the key group turnserver and mode 0640 (certbot "
        "keeps both on renewal), and after a renewal run systemctl kill --signal=USR2 coturn "
        "so that coturn loads it again. With tls: acme coturn gets no certificate (mod_md "
        "keeps its key readable by root only), so Synapse offers no turns: URI; calls use "
        "turn: over UDP and TCP, their media encrypted end to end all the same. Guests never "
        "get TURN credentials (turn_allow_guests: false): guest access is off in every "
        "registration mode.",
    )
    test.set_defaults(handler=run_test)


def run_credentials(arguments: argparse.Namespace) -> int:
    import json
    import time

    from matrix_stack.base.errors import ensure_root
    from matrix_stack.features.turn.config import (
        address_warnings,
        credentials_for,
        default_user,
        load_turn_config,
    )
    from matrix_stack.synapse.api import parse_user

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
    from matrix_stack.base.checks import Steps, exit_status
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.features.turn.check import coturn_running, run_checks, srv_lines
    from matrix_stack.features.turn.config import load_turn_config

    ensure_root()
    config = load_turn_config()
    running = coturn_running()
    checks = run_checks(config, running=running, steps=Steps(print))
    if running is not False:
        print("\n".join(srv_lines(config)))
    return exit_status(checks)
