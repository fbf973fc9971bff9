"""mail: SMTP the way Synapse speaks it, against a small SMTP server run by the test."""

from __future__ import annotations

import base64
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.cli import main as cli
from matrix_stack.cli.doctor import check_mail
from matrix_stack.core.settings import from_mapping
from matrix_stack.features.mail import (
    MailError,
    SmtpServer,
    probe,
    send_test,
    server_from_email_config,
)
from matrix_stack.synapse.api import email_threepids, emails

RECIPIENT = "bob@example.org"
QUEUED = "250 2.0.0 Ok: queued as 4XyZ"


@dataclass
class Mailbox:
    """What the fake server accepts and what it received."""

    login: tuple[str, str] | None = None
    recipient_reply: str = "250 2.1.5 Ok"
    commands: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


class SmtpHandler(socketserver.StreamRequestHandler):
    """A minimal ESMTP server (RFC 5321): EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        box: Mailbox = self.server.mailbox  # type: ignore[attr-defined]
        self.reply("220 fake.example.org ESMTP")
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command.split(" ")[0].upper()
            command = verb + command[len(verb):]
            box.commands.append(verb if verb == "AUTH" else command)
            if verb == "EHLO":
                self.reply("250-fake.example.org")
                if box.login:
                    self.reply("250-AUTH PLAIN")
                self.reply("250 8BITMIME")
            elif verb == "AUTH":
                given = base64.b64decode(command.split()[2]).split(b"\0")[1:]
                ok = box.login == tuple(part.decode() for part in given)
                self.reply("235 2.7.0 Authentication successful" if ok
                           else "535 5.7.8 Error: authentication failed: bad password")
            elif verb == "MAIL":
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                self.reply(box.recipient_reply)
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data.decode())
                box.messages.append("".join(lines))
                self.reply(QUEUED)
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SmtpHandler)
    server.daemon_threads = True
    server.mailbox = Mailbox()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.mailbox, server.server_address[1]  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def local(port: int, **values: Any) -> SmtpServer:
    fields: dict[str, Any] = {"enable_tls": False, "sender": "Matrix <noreply@example.org>",
                              "app_name": "example.org", **values}
    return SmtpServer(host="127.0.0.1", port=port, **fields)


def test_send_test_through_a_local_mta_says_each_step_and_the_servers_reply(
    smtp_server: tuple[Mailbox, int],
) -> None:
    box, port = smtp_server

    line = send_test(local(port), RECIPIENT)

    assert line == (f"connected to 127.0.0.1:{port}, no TLS, no login; accepted for "
                    f"{RECIPIENT}: {QUEUED}")
    assert box.commands[1:3] == ["MAIL FROM:<noreply@example.org>", f"RCPT TO:<{RECIPIENT}>"]
    assert "From: Matrix <noreply@example.org>\r\n" in box.messages[0]
    assert "Subject: [example.org] Test message from matrix-stack-admin\r\n" in box.messages[0]


def test_send_test_logs_in_when_a_user_and_password_are_set(
    smtp_server: tuple[Mailbox, int],
) -> None:
    box, port = smtp_server
    box.login = ("matrix", "right")

    line = send_test(local(port, enable_tls=True, user="matrix", password="right"), RECIPIENT)

    assert line.startswith(f"connected to 127.0.0.1:{port}, no TLS, authenticated as matrix; "
                           f"accepted for {RECIPIENT}")


def test_send_test_with_a_refused_login_gives_the_servers_reply_and_sends_nothing(
    smtp_server: tuple[Mailbox, int],
) -> None:
    box, port = smtp_server
    box.login = ("matrix", "right")

    with pytest.raises(MailError) as caught:
        send_test(local(port, user="matrix", password="wrong"), RECIPIENT)

    assert str(caught.value) == (
        f"connected to 127.0.0.1:{port}, no TLS; 127.0.0.1:{port} refused the login matrix: "
        "535 5.7.8 Error: authentication failed: bad password"
    )
    assert "wrong" not in str(caught.value)
    assert box.messages == []
    assert not any(command.startswith("MAIL") for command in box.commands)


def test_send_test_when_starttls_is_required_but_not_offered_fails_before_login(
    smtp_server: tuple[Mailbox, int],
) -> None:
    box, port = smtp_server
    box.login = ("matrix", "right")
    server = SmtpServer("127.0.0.1", port, require_tls=True, user="matrix", password="right")

    with pytest.raises(MailError, match=f"^connected to 127.0.0.1:{port}; 127.0.0.1:{port} "
                       "offers no STARTTLS, which is required$"):
        send_test(server, RECIPIENT)
    assert "AUTH" not in box.commands


def test_send_test_with_a_refused_recipient_gives_the_servers_reply(
    smtp_server: tuple[Mailbox, int],
) -> None:
    box, port = smtp_server
    box.recipient_reply = "550 5.1.1 <bob@example.org>: Recipient address rejected"

    with pytest.raises(MailError, match=f"127.0.0.1:{port} refused RCPT TO: 550 5.1.1 "
                       "<bob@example.org>: Recipient address rejected$"):
        send_test(local(port), RECIPIENT)
    assert box.messages == []


def test_send_test_to_a_closed_port_says_the_connection_was_refused() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    with pytest.raises(MailError, match=f"^cannot connect to 127.0.0.1:{port}: "
                       "Connection refused$"):
        send_test(local(port), RECIPIENT)


def test_probe_connects_and_greets_without_logging_in_or_sending(
    smtp_server: tuple[Mailbox, int],
) -> None:
    box, port = smtp_server
    box.login = ("matrix", "right")

    assert probe(local(port, user="matrix", password="right")) == (
        f"connected to 127.0.0.1:{port}, no TLS"
    )
    assert [command.split(" ")[0] for command in box.commands] == ["EHLO", "QUIT"]


def test_server_from_email_config_takes_synapses_defaults() -> None:
    assert server_from_email_config({"force_tls": True, "smtp_host": "smtp.example.org"}) == (
        SmtpServer("smtp.example.org", 465, force_tls=True)
    )
    assert server_from_email_config({}) == SmtpServer("localhost", 25)


def test_doctor_with_open_registration_and_mail_off_warns_and_probes_nothing() -> None:
    settings = from_mapping({"server_name": "example.org", "registration": "open"})

    def never() -> str:
        raise AssertionError("probed")

    checks = check_mail(settings, never)

    assert [(check.name, check.ok, check.warning) for check in checks] == [
        ("registration", True, True), ("mail", True, False)
    ]


def test_doctor_with_mail_on_reports_the_probe_failure_with_a_hint() -> None:
    settings = from_mapping({"server_name": "example.org", "mail": "local"})

    def refused() -> str:
        raise MatrixStackError("cannot connect to 127.0.0.1:25: Connection refused")

    (check,) = check_mail(settings, refused)

    assert check.line() == ("✗ mail: cannot connect to 127.0.0.1:25: Connection refused — "
                            "run: matrix-stack-admin mail test ADDRESS")


def test_email_threepids_replaces_the_email_and_keeps_phone_numbers() -> None:
    details = {"threepids": [
        {"medium": "email", "address": "old@example.org", "validated_at": 1},
        {"medium": "msisdn", "address": "33612345678", "validated_at": 1},
    ]}

    threepids = email_threepids(details, "new@example.org")

    assert threepids == [{"medium": "msisdn", "address": "33612345678"},
                         {"medium": "email", "address": "new@example.org"}]
    assert emails({"threepids": threepids}) == ["new@example.org"]


@pytest.mark.parametrize(
    "argv",
    [["user", "add", "bob", "--email", "bob"], ["user", "modify", "bob", "--email", "a b@c.d"],
     ["user", "list", "--email", "@example.org"], ["mail", "test"]],
)
def test_cli_refuses_a_bad_address_as_a_usage_error_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)

    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("matrix-stack-admin ")


def test_cli_mail_test_refuses_a_bad_address_before_anything_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["mail", "test", "not-an-address"]) == 2
    assert capsys.readouterr().err == (
        "matrix-stack-admin: ADDRESS: 'not-an-address' is not an e-mail address such as "
        "admin@example.org\n"
    )
