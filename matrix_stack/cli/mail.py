"""matrix-stack-admin mail test ADDRESS: one message sent exactly as Synapse sends its mail."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any


def add_commands(commands: Any) -> None:
    """Register the mail command and its actions on the top-level subparsers."""
    mail = commands.add_parser(
        "mail",
        help="send a test message the way Synapse sends its mail",
        description="Synapse mails address verifications, password reset links and "
        "notifications through the mail server chosen with matrix-stack/mail (this host's "
        "MTA, or a relay).",
    )
    actions = mail.add_subparsers(dest="mail_command", metavar="ACTION", required=True)
    test = actions.add_parser(
        "test",
        help="send one message to ADDRESS; one line on what happened",
        description="Send one message to ADDRESS with the settings Synapse uses, read from "
        "the email: block of its configuration (host, port, TLS, login and the relay password "
        "in /etc/matrix-synapse/conf.d/50-matrix-stack.yaml) and its sender, then say in one "
        "line what happened: connected, TLS, authenticated, accepted (with the server's "
        "reply), or the exact SMTP error. Nothing is changed either way.",
    )
    test.add_argument("address", metavar="ADDRESS", help="the e-mail address to send to")
    test.set_defaults(handler=run_test)


def run_test(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.core.settings import check_email
    from matrix_stack.features.mail import MailError, read_smtp_server, send_test

    address = check_email("ADDRESS", arguments.address)
    ensure_root()
    server = read_smtp_server()
    try:
        print(f"sent: {send_test(server, address)}")
    except MailError as error:
        raise MailError(f"not sent: {error}") from None
    return 0
