"""matrix-stack-admin token new|list|revoke: Synapse's registration tokens."""

from __future__ import annotations

import argparse
import re

from matrix_stack.base.errors import MatrixStackError, UsageError

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    import datetime
    from typing import Any

_DURATION = re.compile(r"(\d+)([mhdw])")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_commands(commands: Any) -> None:
    """Register the token commands on the top-level subparsers."""
    token = commands.add_parser(
        "token",
        help="registration tokens (registration mode token)",
        description="Synapse's registration tokens: who may create an account when the "
        "question matrix-stack/registration is answered token.",
    )
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new",
        help="make a registration token and print it with the registration address",
        description="Make a registration token, for registration mode token "
        "(matrix-stack/registration), and print it with the address to register at (Element's "
        "domain). Refused, saying how to switch, when registration is in another mode.",
    )
    new.add_argument("--uses", type=int, metavar="N",
                     help="how many accounts it may create (default: unlimited)")
    new.add_argument(
        "--expires", metavar="WHEN",
        help="expiry: a date (2026-12-31, the end of that day, UTC), an ISO time, or a "
        "duration from now (30m, 12h, 7d, 2w)",
    )
    new.set_defaults(handler=run_new)
    listing = actions.add_parser(
        "list", help="list the tokens, uses left and expiry",
        description="List the tokens with their uses left and expiry.",
    )
    listing.add_argument(
        "--json", action="store_true",
        help="print a JSON list (keys token, uses_allowed, uses_left, completed, expires)",
    )
    listing.set_defaults(handler=run_list)
    revoke = actions.add_parser(
        "revoke", help="delete a token so that it creates no account",
        description="Delete a token: it creates no more accounts.",
    )
    revoke.add_argument("token", metavar="TOKEN", help="the token to delete")
    revoke.set_defaults(handler=run_revoke)


def parse_expiry(text: str, now: datetime.datetime) -> datetime.datetime:
    """Return the moment a token expires from a date, an ISO time or a duration from now."""
    import datetime

    value = text.strip()
    duration = _DURATION.fullmatch(value)
    if duration:
        seconds = int(duration.group(1)) * _UNIT_SECONDS[duration.group(2)]
        return now + datetime.timedelta(seconds=seconds)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = datetime.date.fromisoformat(value)
            moment = datetime.datetime.combine(day, datetime.time.max, datetime.UTC)
        else:
            moment = datetime.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
    except ValueError:
        raise UsageError(
            f"--expires {text!r}: give a date (2026-12-31), an ISO time or a duration (7d)"
        ) from None
    if moment <= now:
        raise UsageError(f"--expires {text!r} is in the past")
    return moment


def _session() -> Any:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.cli.user_args import local_server_name
    from matrix_stack.synapse.api import admin_session

    ensure_root()
    return admin_session(local_server_name)  # read only if the token has to be made again


def run_new(arguments: argparse.Namespace) -> int:
    import datetime

    from matrix_stack.core.stack import current_settings
    from matrix_stack.synapse.api import new_registration_token

    settings = current_settings()
    if settings.registration != "token":
        raise MatrixStackError(
            f"registration is '{settings.registration}', so nobody is asked for a token; "
            "switch to 'token' with: dpkg-reconfigure matrix-stack"
        )
    if arguments.uses is not None and arguments.uses < 1:
        raise UsageError("--uses must be 1 or more")
    now = datetime.datetime.now(datetime.UTC)
    expiry = parse_expiry(arguments.expires, now) if arguments.expires else None
    expiry_ms = int(expiry.timestamp() * 1000) if expiry else None
    made = new_registration_token(_session(), arguments.uses, expiry_ms)
    print(made["token"])
    print(f"register at: https://{settings.element_domain}/#/register")
    return 0


def _rows(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import datetime

    rows = []
    for token in tokens:
        allowed = token.get("uses_allowed")
        used = int(token.get("completed") or 0) + int(token.get("pending") or 0)
        expiry = token.get("expiry_time")
        rows.append({
            "token": token["token"],
            "uses_allowed": allowed,
            "uses_left": None if allowed is None else max(allowed - used, 0),
            "completed": int(token.get("completed") or 0),
            "expires": datetime.datetime.fromtimestamp(expiry / 1000, datetime.UTC)
            .strftime("%Y-%m-%dT%H:%M:%SZ") if expiry else None,
        })
    return rows


def run_list(arguments: argparse.Namespace) -> int:
    import json

    from matrix_stack.synapse.api import registration_tokens

    rows = _rows(registration_tokens(_session()))
    if arguments.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'TOKEN':24} {'USES LEFT':10} EXPIRES")
    for row in rows:
        left = "unlimited" if row["uses_left"] is None else str(row["uses_left"])
        print(f"{row['token']:24} {left:10} {row['expires'] or 'never'}")
    return 0


def run_revoke(arguments: argparse.Namespace) -> int:
    from matrix_stack.synapse.api import revoke_registration_token

    revoke_registration_token(_session(), arguments.token)
    print("token revoked")
    return 0
