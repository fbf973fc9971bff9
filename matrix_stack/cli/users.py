"""matrix-stack-admin user … and passwd: accounts through Synapse's admin API, or offline."""

from __future__ import annotations

import argparse

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.cli import user_names
from matrix_stack.cli.user_args import (
    EMAIL_HELP,
    NAME_HELP,
    PASSWORD_FILE_HELP,
    confirm,
    email_argument,
    format_time,
    local_server_name,
    refuse_service_account,
    target_user,
)
from matrix_stack.cli.user_names import existing_user_argument

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

def add_commands(commands: Any) -> None:
    """Register the user and passwd commands on the top-level subparsers."""
    user = commands.add_parser(
        "user",
        help="add, list, deactivate accounts",
        description="The accounts of this server, through Synapse's admin API: add, list, "
        "deactivate, modify, show and log out users.",
    )
    user_commands = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    add = user_commands.add_parser(
        "add",
        help="create an account (shared-secret registration)",
        description="Create an account with Synapse's shared-secret registration. NAME is a "
        "user name or a full @name:SERVER of this server. The password is asked twice, or read "
        "from a file with --password-file.",
    )
    add.add_argument("name", metavar="NAME", help=NAME_HELP)
    add.add_argument("--admin", action="store_true", help="make it a server administrator")
    add.add_argument("--password-file", metavar="F", help=PASSWORD_FILE_HELP)
    add.add_argument(
        "--exists-ok", action="store_true", help="succeed, changing nothing, if it exists"
    )
    add.add_argument("--email", metavar="ADDR", type=email_argument, help=EMAIL_HELP)
    add.set_defaults(handler=run_add)

    listing = user_commands.add_parser(
        "list",
        help="list the accounts",
        description="List every account (all pages of Synapse's admin API): name, "
        "administrator, deactivated, creation time and last seen time. matrix-stack-admin's "
        "own service account is not shown.",
    )
    listing.add_argument(
        "--json", action="store_true", help="print a JSON list of objects with the keys "
        "user_id, admin, deactivated, created and last_seen"
    )
    listing.add_argument("--all", action="store_true", help="include deactivated accounts")
    listing.add_argument(
        "--email", metavar="ADDR", type=email_argument,
        help="list only the account this e-mail address is bound to",
    )
    listing.set_defaults(handler=run_list)

    deactivate = user_commands.add_parser(
        "deactivate",
        help="deactivate an account (it cannot log in again)",
        description="Deactivate an account: its sessions end, it leaves its rooms and can no "
        "longer log in. Asks for confirmation on the terminal.",
    )
    existing_user_argument(deactivate, NAME_HELP)
    deactivate.add_argument(
        "--erase", action="store_true", help="also erase the display name, avatar and messages "
        "for new room members (GDPR erasure)"
    )
    deactivate.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    deactivate.set_defaults(handler=run_deactivate)

    from matrix_stack.cli import user_changes as cli_user_changes

    cli_user_changes.add_commands(user_commands)



def run_add(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.base.secrets import REGISTRATION_SECRET_PATH
    from matrix_stack.synapse.api import Synapse, SynapseError, read_root_secret
    from matrix_stack.synapse.passwords import read_new_password

    ensure_root()
    user = target_user(arguments.name)
    refuse_service_account(user)
    synapse = Synapse()
    if not synapse.answers():
        raise MatrixStackError(
            "Synapse does not answer on 127.0.0.1:8008; start it: systemctl start matrix-synapse"
        )
    password = read_new_password(arguments.password_file)
    try:
        synapse.register(
            user,
            password,
            admin=arguments.admin,
            shared_secret=read_root_secret(REGISTRATION_SECRET_PATH),
        )
    except SynapseError as error:
        if error.errcode == "M_USER_IN_USE":
            if arguments.exists_ok:
                print(f"{user} already exists: left unchanged")
                return 0
            raise MatrixStackError(
                f"{user} already exists (--exists-ok accepts that; passwd changes its password)"
            ) from None
        raise
    user_names.update(add=user.localpart)
    print(f"created {user}{' (administrator)' if arguments.admin else ''}")
    if arguments.email:
        bind_email(user, arguments.email)
    return 0


def bind_email(user: Any, address: str) -> None:
    """Bind address to user's account as verified, through the admin API."""
    from matrix_stack.synapse.api import admin_session, email_threepids, modify_user

    synapse = admin_session(user.server_name)
    modify_user(synapse, user, {"threepids": email_threepids(synapse.user(user), address)})
    print(f"bound {address} to {user}")


def user_row(user: dict[str, Any]) -> dict[str, Any]:
    """Return one listed user in a stable shape."""
    return {
        "user_id": user["name"],
        "admin": bool(user.get("admin")),
        "deactivated": bool(user.get("deactivated")),
        "created": format_time(user.get("creation_ts")),
        "last_seen": format_time(user.get("last_seen_ts")),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Return rows as aligned columns with a header line."""
    header = ["USER", "ADMIN", "DEACTIVATED", "CREATED", "LAST SEEN"]
    lines = [
        [
            row["user_id"],
            "yes" if row["admin"] else "no",
            "yes" if row["deactivated"] else "no",
            row["created"] or "-",
            row["last_seen"] or "never",
        ]
        for row in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=False)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    )


def json_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Return each row as json.dumps(rows, indent=2) writes it, without the list's brackets.

    The rows hold only strings, booleans and None: the C encoder with these separators writes
    what indent=2 makes the Python encoder write, several times faster.
    """
    import json

    encode = json.JSONEncoder(separators=(",\n    ", ": ")).encode
    return [f"  {{\n    {encode(row)[1:-1]}\n  }}" for row in rows]


def print_json_list(pages: Iterator[list[dict[str, Any]]], write: Callable[[str], Any]) -> None:
    """Write the rows of every page as json.dumps(all rows, indent=2), a page at a time."""
    separator = "[\n"
    for rows in pages:
        if rows:
            write(separator + ",\n".join(json_rows(rows)))
            separator = ",\n"
    write("[]\n" if separator == "[\n" else "\n]\n")


def run_list(arguments: argparse.Namespace) -> int:
    import sys

    from matrix_stack.base.errors import ensure_root
    from matrix_stack.synapse.api import SERVICE_LOCALPART, admin_session, user_of_email

    ensure_root()
    # The server name is read (YAML) only if the cached admin token has to be renewed.
    synapse = admin_session(local_server_name)
    user_id = None
    if arguments.email:
        user_id = user_of_email(synapse, arguments.email)
    pages = [] if arguments.email and user_id is None else synapse.user_pages(
        include_deactivated=arguments.all, user_id=user_id
    )
    service = f"@{SERVICE_LOCALPART}:"
    names: list[str] = []
    rows = (
        [user_row(user) for user in page
         if not user["name"].startswith(service) and user_id in (None, user["name"])]
        for page in pages
    )
    if arguments.json:
        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        print_json_list(remembered(rows, names), write)
    else:
        print(format_table([row for page in remembered(rows, names) for row in page]))
    if not arguments.email:
        user_names.remember(names)
    return 0


def remembered(
    pages: Iterator[list[dict[str, Any]]], names: list[str]
) -> Iterator[list[dict[str, Any]]]:
    """Yield the pages of rows, keeping the localparts of the active accounts in names."""
    for rows in pages:
        names.extend(row["user_id"][1:].split(":")[0] for row in rows if not row["deactivated"])
        yield rows


def run_deactivate(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.synapse.api import admin_session

    ensure_root()
    user = target_user(arguments.name)
    refuse_service_account(user)
    synapse = admin_session(user.server_name)
    synapse.user(user)  # a one-line error for an unknown user, before asking
    erase = " and erase" if arguments.erase else ""
    if not arguments.yes and not confirm(f"Deactivate{erase} {user}? This cannot be undone."):
        print("nothing done")
        return 1
    synapse.deactivate(user, erase=arguments.erase)
    user_names.update(remove=user.localpart)
    print(f"deactivated {user}")
    return 0
