"""Talk SMTP the way Synapse does, from the email block of its own merged configuration.

Synapse (synapse/handlers/send_email.py) connects to smtp_host:smtp_port, with TLS from the
first byte when force_tls, else upgrades with STARTTLS when the server offers it and
enable_tls is on (required when require_transport_security), checks the certificate against
the system's authorities, and logs in when smtp_user and smtp_pass are set.
"""

from __future__ import annotations

import email.policy
import email.utils
import smtplib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from matrix_stack.base.errors import MatrixStackError

TIMEOUT = 20  # seconds, per network operation


class MailError(MatrixStackError):
    """An SMTP step failed; the message says what had worked before it."""


@dataclass(frozen=True)
class SmtpServer:
    """Where and how Synapse sends mail (its email: block)."""

    host: str
    port: int
    force_tls: bool = False
    enable_tls: bool = True
    require_tls: bool = False
    user: str = ""
    password: str = ""
    sender: str = ""
    app_name: str = "Matrix"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def server_from_email_config(block: Mapping[str, Any]) -> SmtpServer:
    """Return the server an email: block names, with Synapse's own defaults."""
    force_tls = bool(block.get("force_tls", False))
    return SmtpServer(
        host=str(block.get("smtp_host", "localhost")),
        port=int(block.get("smtp_port", 465 if force_tls else 25)),
        force_tls=force_tls,
        enable_tls=bool(block.get("enable_tls", True)),
        require_tls=bool(block.get("require_transport_security", False)),
        user=str(block.get("smtp_user") or ""),
        password=str(block.get("smtp_pass") or ""),
        sender=str(block.get("notif_from") or ""),
        app_name=str(block.get("app_name") or "Matrix"),
    )


def read_smtp_server(root: Path = Path("/")) -> SmtpServer:
    """Return the server Synapse's merged configuration sends mail through."""
    from matrix_stack.synapse.config import read_merged_config

    block = read_merged_config(root).get("email")
    if not block:
        raise MatrixStackError(
            "Synapse sends no mail (no email: block); turn it on with: "
            "dpkg-reconfigure matrix-stack (matrix-stack/mail)"
        )
    return server_from_email_config(block)


class Session:
    """One SMTP conversation, remembering the steps that worked for the one-line report."""

    def __init__(self, server: SmtpServer, context: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.context = context or ssl.create_default_context()
        self.steps: list[str] = []
        self.smtp: smtplib.SMTP | None = None

    def fail(self, what: str) -> MailError:
        done = ", ".join(self.steps)
        return MailError(f"{done + '; ' if done else ''}{what}")

    def open(self, *, login: bool = True) -> smtplib.SMTP:
        """Connect, EHLO, TLS as configured and log in (login); raise MailError on refusal."""
        server = self.server
        try:
            smtp = self._connect()
            self.smtp = smtp
            code, reply = smtp.ehlo()
            if code != 250:
                raise self.fail(f"{server.address} refused EHLO: {code} {_text(reply)}")
            if not server.force_tls:
                self._starttls(smtp)
            if login and server.user and server.password:
                self._login(smtp)
        except MailError:
            self.close()
            raise
        except ssl.SSLError as error:
            self.close()
            raise self.fail(f"TLS with {server.address} failed: {_ssl_reason(error)}") from None
        except smtplib.SMTPResponseException as error:
            self.close()
            raise self.fail(
                f"{server.address} answered {error.smtp_code} {_text(error.smtp_error)}"
            ) from None
        except (OSError, smtplib.SMTPException) as error:
            self.close()
            raise self.fail(f"{server.address}: {_os_reason(error)}") from None
        return smtp

    def _connect(self) -> smtplib.SMTP:
        server = self.server
        try:
            if server.force_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    server.host, server.port, timeout=TIMEOUT, context=self.context
                )
            else:
                smtp = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
        except ssl.SSLError as error:
            self.steps.append(f"connected to {server.address}")
            raise self.fail(f"TLS failed: {_ssl_reason(error)}") from None
        except OSError as error:
            raise self.fail(f"cannot connect to {server.address}: {_os_reason(error)}") from None
        self.steps.append(f"connected to {server.address}")
        if server.force_tls:
            self.steps.append("TLS")
        return smtp

    def _starttls(self, smtp: smtplib.SMTP) -> None:
        server = self.server
        offered = smtp.has_extn("starttls")
        if server.enable_tls and offered:
            smtp.starttls(context=self.context)
            smtp.ehlo()
            self.steps.append("STARTTLS")
        elif server.require_tls:
            raise self.fail(f"{server.address} offers no STARTTLS, which is required")
        else:
            self.steps.append("no TLS")

    def _login(self, smtp: smtplib.SMTP) -> None:
        server = self.server
        if not smtp.has_extn("auth"):
            raise self.fail(f"{server.address} offers no login (AUTH) for {server.user}")
        try:
            smtp.login(server.user, server.password)
        except smtplib.SMTPAuthenticationError as error:
            raise self.fail(
                f"{server.address} refused the login {server.user}: "
                f"{error.smtp_code} {_text(error.smtp_error)}"
            ) from None
        self.steps.append(f"authenticated as {server.user}")

    def send(self, message: EmailMessage, sender: str, recipient: str) -> str:
        """Send message through the open session; return the server's final reply."""
        assert self.smtp is not None
        smtp = self.smtp
        try:
            for command, (code, reply) in (
                ("MAIL FROM", smtp.mail(sender)),
                ("RCPT TO", smtp.rcpt(recipient)),
            ):
                if code not in (250, 251):
                    raise self.fail(f"{self.server.address} refused {command}: {code} "
                                    f"{_text(reply)}")
            code, reply = smtp.data(message.as_bytes(policy=email.policy.SMTP))
        except smtplib.SMTPResponseException as error:
            raise self.fail(
                f"{self.server.address} refused the message: {error.smtp_code} "
                f"{_text(error.smtp_error)}"
            ) from None
        except (OSError, smtplib.SMTPException) as error:
            raise self.fail(f"{self.server.address}: {_os_reason(error)}") from None
        if code != 250:
            raise self.fail(f"{self.server.address} refused the message: {code} {_text(reply)}")
        return f"{code} {_text(reply)}"

    def close(self) -> None:
        if self.smtp is None:
            return
        try:
            self.smtp.quit()
        except (OSError, smtplib.SMTPException):
            self.smtp.close()
        self.smtp = None


def build_test_message(server: SmtpServer, recipient: str) -> EmailMessage:
    """Return the test message: Synapse's sender, one line of text."""
    message = EmailMessage()
    message["From"] = server.sender or f"{server.app_name} <noreply@{socket.getfqdn()}>"
    message["To"] = recipient
    message["Subject"] = f"[{server.app_name}] Test message from matrix-stack-admin"
    message["Date"] = email.utils.formatdate(localtime=True)
    message["Message-ID"] = email.utils.make_msgid(domain=server.app_name)
    message.set_content(
        "This message was sent by matrix-stack-admin mail test through the mail server\n"
        f"Synapse uses ({server.address}). Synapse's own mail will arrive the same way.\n"
    )
    return message


def send_test(
    server: SmtpServer, recipient: str, context: ssl.SSLContext | None = None
) -> str:
    """Send one test message as Synapse would; return one line on what happened."""
    message = build_test_message(server, recipient)
    sender = email.utils.parseaddr(str(message["From"]))[1]
    session = Session(server, context)
    session.open()
    try:
        if not (server.user and server.password):
            session.steps.append("no login")
        reply = session.send(message, sender, recipient)
    finally:
        session.close()
    return f"{', '.join(session.steps)}; accepted for {recipient}: {reply}"


def probe(server: SmtpServer, context: ssl.SSLContext | None = None) -> str:
    """Connect, EHLO and TLS as Synapse would, without logging in or sending; one line."""
    session = Session(server, context)
    session.open(login=False)
    session.close()
    return ", ".join(session.steps)


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _ssl_reason(error: ssl.SSLError) -> str:
    return str(getattr(error, "verify_message", "") or error.reason or error)


def _os_reason(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return f"no answer within {TIMEOUT} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
