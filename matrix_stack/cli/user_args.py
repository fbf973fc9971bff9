"""What the user commands share: the user given on the command line, its checks and help."""

from __future__ import annotations

import argparse
import sys

from matrix_stack.base.errors import MatrixStackError

TYPE_CHECKING = False  # typing itself costs the command line a few milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from matrix_stack.synapse.api import UserId

PASSWORD_FILE_HELP = (
    "read the password from file F ('-': standard input) instead of prompting; passwords are "
    "never given on the command line"
)
NAME_HELP = "a user name, or @name:SERVER of this server"
EMAIL_HELP = (
    "bind this e-mail address to the account, as verified (password reset and notifications "
    "go to it; it replaces any other e-mail address of the account)"
)


def email_argument(value: str) -> str:
    """Return an e-mail address given on the command line, or make argparse refuse it."""
    from matrix_stack.base.errors import SettingsError
    from matrix_stack.core.settings import check_email

    try:
        return check_email("--email", value)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(f"{value!r} {error.reason}") from None


def local_server_name() -> str:
    from matrix_stack.core.servername import synapse_server_name

    name = synapse_server_name()
    if name is None:
        raise MatrixStackError(
            "Synapse has no server name yet (/etc/matrix-synapse/conf.d/server_name.yaml); "
            "run: dpkg-reconfigure matrix-stack"
        )
    return name


def target_user(name: str) -> UserId:
    from matrix_stack.synapse.api import parse_user

    return parse_user(name, local_server_name())


def refuse_service_account(user: UserId) -> None:
    from matrix_stack.synapse.api import SERVICE_LOCALPART

    if user.localpart == SERVICE_LOCALPART:
        raise MatrixStackError(
            f"{user} is matrix-stack-admin's own service account; it cannot be changed here"
        )


def format_time(milliseconds: Any) -> str | None:
    """Return a time in milliseconds as UTC ISO 8601 to the second (time: faster than datetime)."""
    import time

    if not milliseconds:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(milliseconds) // 1000))


def confirm(question: str, *, read: Callable[[str], str] = input) -> bool:
    """Ask a yes/no question on the terminal; refuse when there is none."""
    if not sys.stdin.isatty():
        raise MatrixStackError("no terminal to confirm on: add --yes")
    return read(f"{question} [y/N] ").strip().lower() in ("y", "yes")
