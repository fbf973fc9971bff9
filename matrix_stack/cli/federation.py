"""matrix-stack-admin federation list | allow | deny | mode | key-servers | check."""

from __future__ import annotations

import argparse

from matrix_stack.base.errors import MatrixStackError

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any

    from matrix_stack.core.settings import Settings

MODES = ("allow-list", "open", "off")


def add_commands(commands: Any) -> None:
    """Register the federation command and its actions on the top-level subparsers."""
    federation = commands.add_parser(
        "federation", help="which servers this one federates with, and a federation tester",
        description="Which servers this one federates with (federation, "
        "federation_domains and federation_key_servers in /etc/matrix-stack/stack.yaml), and "
        "a local federation tester.",
    )
    actions = federation.add_subparsers(dest="federation_command", metavar="ACTION",
                                        required=True)

    listing = actions.add_parser(
        "list", help="show the federation mode and the allowed servers",
        description="Show the federation mode, the servers on the allow-list and which of "
        "them are trusted key servers, as /etc/matrix-stack/stack.yaml has them.",
    )
    listing.add_argument(
        "--json", action="store_true",
        help="print a JSON object (keys server_name, mode, allowed, key_servers)",
    )
    listing.set_defaults(handler=run_list)

    allow = actions.add_parser(
        "allow", help="add servers to the allow-list and apply",
        description="Add server names, each with an optional :port, to federation_domains in "
        "/etc/matrix-stack/stack.yaml, then apply as apply does: Synapse's settings are "
        "rewritten and Synapse restarts; nothing else does. Names are validated first, and a "
        "configuration Synapse refuses leaves stack.yaml as it was. In allow-list mode Synapse "
        "federates only with these servers, in both directions, and its own media and key "
        "requests go to them only.",
    )
    allow.add_argument("domains", nargs="+", metavar="DOMAIN", help="a server name[:port]")
    allow.add_argument(
        "--key-server", action="store_true", help="also trust these servers as key servers "
        "(federation_key_servers): Synapse then asks them for other servers' signing keys too, "
        "as the usual recipe has both ends of a private federation do"
    )
    allow.set_defaults(handler=run_allow)

    deny = actions.add_parser(
        "deny", help="remove servers from the allow-list (and the key servers) and apply",
        description="Remove server names from the allow-list (federation_domains) and from "
        "the key servers (federation_key_servers) in /etc/matrix-stack/stack.yaml, then apply.",
    )
    deny.add_argument("domains", nargs="+", metavar="DOMAIN", help="a server name")
    deny.set_defaults(handler=run_deny)

    mode = actions.add_parser(
        "mode", help="allow-list, open or off, and apply",
        description="Set the federation mode, then apply. allow-list (the default) federates "
        "only with the listed servers (federation_domain_whitelist); open federates with every "
        "server and trusts matrix.org as a key server (its warning is silenced); off gives "
        "Synapse an empty allow-list: no federation at all. Element's default for new rooms "
        "(default_federate) follows: off makes new rooms local.",
    )
    mode.add_argument("mode", choices=MODES, metavar="MODE", help="allow-list, open or off")
    mode.set_defaults(handler=run_mode)

    key_servers = actions.add_parser(
        "key-servers", help="list the servers trusted to vouch for other servers' keys",
        description="List the trusted key servers Synapse asks for other servers' signing "
        "keys: none in allow-list mode (each server's keys come from that server itself) "
        "unless added with --key-server; matrix.org and those in open mode; none when "
        "federation is off.",
    )
    key_servers.add_argument("--json", action="store_true", help="print a JSON list")
    key_servers.set_defaults(handler=run_key_servers)

    check = actions.add_parser(
        "check", help="test a server's federation as another server would reach it",
        description="A local federation tester: check SERVER (default: this server) as "
        "another Matrix server would reach it, one line per check (\u2713 passed, \u2717 "
        "failed, ! warning), exit status 1 if any check failed. In order: its "
        "/.well-known/matrix/server (redirects followed, at most 50 KiB, JSON with m.server, "
        "served as application/json); DNS SRV _matrix-fed._tcp then the deprecated "
        "_matrix._tcp, else port 8448 (none of these when the name has a port or is an IP "
        "address); every address the host resolves to; for each address, a TLS certificate "
        "valid for the delegated host name against this system's trust store (what Synapse "
        "uses), named self-signed when it is; /_matrix/key/v2/server (its server_name "
        "matches, valid_until_ts is in the future, every ed25519 key's signature verifies); "
        "/_matrix/federation/v1/version; last, whether this server's allow-list admits "
        "SERVER. Nothing is sent to an outside tester.",
    )
    check.add_argument("server", nargs="?", metavar="SERVER", help="a server name[:port]")
    check.add_argument(
        "--json", action="store_true", help="print server, ok and the list of checks (each "
        "with check, status (pass, fail, warn), detail and address) instead of lines"
    )
    check.set_defaults(handler=run_check)


def _settings() -> Settings:
    from matrix_stack.core.stack import current_settings

    return current_settings()


def run_list(arguments: argparse.Namespace) -> int:
    import json

    from matrix_stack.features.federation.allow import describe, describe_lines

    settings = _settings()
    if arguments.json:
        print(json.dumps(describe(settings), indent=2))
    else:
        for line in describe_lines(settings):
            print(line)
    return 0


def run_key_servers(arguments: argparse.Namespace) -> int:
    import json

    settings = _settings()
    names = list(settings.trusted_key_servers)
    if arguments.json:
        print(json.dumps(names))
    elif names:
        for name in names:
            print(name)
    else:
        print("none: each server's keys are fetched from that server itself")
    return 0


def _change(edit: Any) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.features.federation.allow import change_stack

    ensure_root()
    change, lines = change_stack(edit)
    for note in change.notes:
        print(note)
    for line in lines:
        print(line)
    return 0


def run_allow(arguments: argparse.Namespace) -> int:
    from matrix_stack.features.federation.allow import allow

    return _change(lambda stack: allow(stack, arguments.domains, arguments.key_server))


def run_deny(arguments: argparse.Namespace) -> int:
    from matrix_stack.features.federation.allow import deny

    return _change(lambda stack: deny(stack, arguments.domains))


def run_mode(arguments: argparse.Namespace) -> int:
    from matrix_stack.features.federation.allow import set_mode

    return _change(lambda stack: set_mode(stack, arguments.mode))


def own_server_name() -> str | None:
    """Return this server's name from stack.yaml, else from Synapse's own file."""
    from matrix_stack.core.servername import synapse_server_name
    from matrix_stack.core.stack import read_stack

    try:
        name = read_stack().get("server_name")
    except MatrixStackError:
        name = None
    return str(name).lower() if name else synapse_server_name()


def run_check(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.checks import Status
    from matrix_stack.features.federation.check import report_json, run_check, synapse_allow_list
    from matrix_stack.features.federation.resolve import Network, parse_server_name

    own = own_server_name()
    if not arguments.server and own is None:
        raise MatrixStackError("this server has no name yet: give the SERVER to check")
    server = parse_server_name(arguments.server or str(own))
    results = run_check(server, Network(), lambda name: synapse_allow_list(name, own))
    failed = [result for result in results if result.status is Status.FAIL]
    if arguments.json:
        print(report_json(server, results))
    else:
        for result in results:
            print(result.line())
        print(f"{server}: every check passed" if not failed
              else f"{server}: {len(failed)} of {len(results)} checks failed")
    return 1 if failed else 0
