"""matrix-stack-admin user modify|show|logout: change an account, see and end its sessions."""

from __future__ import annotations

import argparse

from matrix_stack.base.errors import MatrixStackError, UsageError
from matrix_stack.cli import user_names
from matrix_stack.cli.user_args import (
    EMAIL_HELP,
    NAME_HELP,
    PASSWORD_FILE_HELP,
    email_argument,
    format_time,
    refuse_service_account,
    target_user,
)
from matrix_stack.cli.user_names import existing_user_argument

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any


def add_commands(user_commands: Any) -> None:
    """Register modify, show and logout under the user command."""
    modify = user_commands.add_parser(
        "modify",
        help="change administrator rights, display name, or re-activate",
        description="Change an account through the admin API. The last administrator cannot "
        "lose its rights. Re-activating needs a new password (deactivation wiped it): it is "
        "asked for, or read with --password-file.",
    )
    existing_user_argument(modify, NAME_HELP)
    rights = modify.add_mutually_exclusive_group()
    rights.add_argument("--admin", action="store_true", default=None, help="make it an admin")
    rights.add_argument(
        "--no-admin", dest="admin", action="store_false", help="take its admin rights away"
    )
    modify.add_argument("--displayname", metavar="TEXT", help="set its display name")
    modify.add_argument("--email", metavar="ADDR", type=email_argument, help=EMAIL_HELP)
    modify.add_argument(
        "--reactivate", action="store_true", help="re-activate it (with --password-file or "
        "a prompt for its new password)"
    )
    modify.add_argument("--password-file", metavar="F", help=PASSWORD_FILE_HELP)
    modify.set_defaults(handler=run_modify)

    show = user_commands.add_parser(
        "show",
        help="show an account and its sessions",
        description="Show an account: administrator, deactivated, creation and last seen "
        "times, and its devices (sessions) with their name, last address and last seen time.",
    )
    existing_user_argument(show, NAME_HELP)
    show.add_argument(
        "--json", action="store_true", help="print a JSON object (keys user_id, displayname, "
        "admin, deactivated, emails, created, last_seen, device_count, devices)"
    )
    show.set_defaults(handler=run_show)

    logout = user_commands.add_parser(
        "logout",
        help="end one session of a user, or all of them",
        description="End a user's sessions, every one or only the device given; their access "
        "tokens stop working at once.",
    )
    existing_user_argument(logout, NAME_HELP)
    logout.add_argument("--device", metavar="ID", help="end only this device's session")
    logout.set_defaults(handler=run_logout)


def _admin_client(user: Any) -> Any:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.synapse.api import admin_session

    ensure_root()
    return admin_session(user.server_name)


def _other_active_admins(synapse: Any, user: Any) -> list[str]:
    from matrix_stack.synapse.api import service_account

    service = str(service_account(user.server_name))
    return [
        account["name"]
        for account in synapse.users(include_deactivated=False, admins=True)
        if account.get("admin") and account["name"] not in (service, str(user))
    ]


def run_modify(arguments: argparse.Namespace) -> int:
    from matrix_stack.synapse.api import (
        SynapseError,
        background_updates_pending,
        email_threepids,
        modify_user,
    )
    from matrix_stack.synapse.passwords import read_new_password

    user = target_user(arguments.name)
    refuse_service_account(user)
    if arguments.password_file and not arguments.reactivate:
        raise UsageError("--password-file goes with --reactivate (passwd changes a password)")
    if (arguments.admin is None and arguments.displayname is None and not arguments.reactivate
            and arguments.email is None):
        raise UsageError("nothing to change: give --admin, --no-admin, --displayname, --email "
                         "or --reactivate")
    synapse = _admin_client(user)
    current = synapse.user(user)
    fields: dict[str, Any] = {}
    demoting = arguments.admin is False and current.get("admin")
    if demoting and not _other_active_admins(synapse, user):
        raise MatrixStackError(
            f"{user} is the last administrator: make another one first "
            "(matrix-stack-admin user modify NAME --admin)"
        )
    if arguments.admin is not None:
        fields["admin"] = arguments.admin
    if arguments.displayname is not None:
        fields["displayname"] = arguments.displayname
    if arguments.email is not None:
        fields["threepids"] = email_threepids(current, arguments.email)
    if arguments.reactivate:
        if not current.get("deactivated"):
            raise MatrixStackError(f"{user} is not deactivated")
        fields["deactivated"] = False
        fields["password"] = read_new_password(arguments.password_file)
    try:
        modify_user(synapse, user, fields)
    except SynapseError as error:
        # Synapse 1.160 on SQLite fails re-activation until its background update has built
        # the unique index on profiles.full_user_id (minutes after a first start).
        if error.status == 500 and arguments.reactivate and background_updates_pending(synapse):
            raise MatrixStackError(
                "Synapse is still building its database indexes (background updates) and "
                f"cannot re-activate {user} yet; try again in a minute"
            ) from None
        raise
    if arguments.reactivate:
        user_names.update(add=user.localpart)
    print(f"modified {user}: " + ", ".join(_describe(key, value) for key, value in fields.items()))
    return 0


def _describe(key: str, value: Any) -> str:
    if key == "password":
        return "new password"
    if key == "deactivated":
        return "re-activated"
    if key == "admin":
        return "administrator" if value else "not an administrator"
    if key == "threepids":
        from matrix_stack.synapse.api import emails

        return "e-mail " + ", ".join(emails({"threepids": value}))
    return f"{key} {value!r}"


def _seconds_or_ms(value: Any) -> int | None:
    """Return milliseconds from the admin API's creation_ts (seconds in v2/users/ID)."""
    if not value:
        return None
    number = int(value)
    return number * 1000 if number < 100_000_000_000 else number


def run_show(arguments: argparse.Namespace) -> int:
    import json

    from matrix_stack.synapse.api import devices, emails

    user = target_user(arguments.name)
    synapse = _admin_client(user)
    details = synapse.user(user)
    sessions = [
        {
            "device_id": device["device_id"],
            "name": device.get("display_name"),
            "last_ip": device.get("last_seen_ip"),
            "last_seen": format_time(device.get("last_seen_ts")),
        }
        for device in devices(synapse, user)
    ]
    shown = {
        "user_id": str(user),
        "displayname": details.get("displayname"),
        "admin": bool(details.get("admin")),
        "deactivated": bool(details.get("deactivated")),
        "emails": emails(details),
        "created": format_time(_seconds_or_ms(details.get("creation_ts"))),
        "last_seen": format_time(details.get("last_seen_ts")),
        "device_count": len(sessions),
        "devices": sessions,
    }
    if arguments.json:
        print(json.dumps(shown, indent=2))
        return 0
    for key in ("user_id", "displayname", "admin", "deactivated", "emails", "created",
                "last_seen"):
        value = shown[key]
        if isinstance(value, list):
            value = ", ".join(value)
        text = ("yes" if value else "no") if isinstance(value, bool) else (value or "-")
        print(f"{key.replace('_', ' ') + ':':13} {text}")
    print(f"{'devices:':13} {len(sessions)}")
    for session in sessions:
        print(f"  {session['device_id']}  {session['name'] or '-'}  "
              f"{session['last_ip'] or '-'}  {session['last_seen'] or 'never'}")
    return 0


def run_logout(arguments: argparse.Namespace) -> int:
    from matrix_stack.synapse.api import delete_devices, devices

    user = target_user(arguments.name)
    synapse = _admin_client(user)
    synapse.user(user)
    known = [device["device_id"] for device in devices(synapse, user)]
    if arguments.device is not None:
        if arguments.device not in known:
            raise MatrixStackError(f"{user} has no device {arguments.device}")
        ended = [arguments.device]
    else:
        ended = known
    if ended:
        delete_devices(synapse, user, ended)
    print(f"ended {len(ended)} session(s) of {user}")
    return 0
