"""debconf answers <-> /etc/matrix-stack/stack.yaml keys, through one mapping table.

stack.py reads, writes and validates the file itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from matrix_stack import settings as settings_module


def _text(value: str) -> Any:
    return value.strip()


def _boolean(value: str) -> Any:
    return settings_module.check_bool("", value) if value.strip() else None


def _word_list(value: str) -> Any:
    return settings_module.split_list(value)


def _number(value: str) -> Any:
    text = value.strip()
    return int(text) if text.isdigit() else text


def _from_text(value: Any) -> str:
    return "" if value is None else str(value)


def _from_boolean(value: Any) -> str:
    return "true" if value else "false"


def _from_list(value: Any) -> str:
    return ", ".join(settings_module.split_list(value))


@dataclass(frozen=True)
class Answer:
    """One debconf question and the stack.yaml key it is kept in."""

    question: str
    key: str
    to_yaml: Callable[[str], Any] = _text
    to_debconf: Callable[[Any], str] = _from_text


# The one table: question <-> stack.yaml key <-> how the value crosses between them.
# Keys are the question names with '-' turned into '_' (debian/matrix-stack.config relies on it).
ANSWERS: tuple[Answer, ...] = (
    Answer("matrix-stack/server-name", "server_name"),
    Answer("matrix-stack/element-domain", "element_domain"),
    Answer("matrix-stack/element-version", "element_version"),
    Answer("matrix-stack/element-source", "element_source"),
    Answer("matrix-stack/tls", "tls"),
    Answer("matrix-stack/tls-cert", "tls_cert"),
    Answer("matrix-stack/tls-key", "tls_key"),
    Answer("matrix-stack/acme-email", "acme_email"),
    Answer("matrix-stack/turn-enable", "turn_enable", _boolean, _from_boolean),
    Answer("matrix-stack/turn-domain", "turn_domain"),
    Answer("matrix-stack/turn-external-ip", "turn_external_ip"),
    Answer("matrix-stack/turn-listening-ip", "turn_listening_ip"),
    Answer("matrix-stack/federation", "federation"),
    Answer("matrix-stack/federation-domains", "federation_domains", _word_list, _from_list),
    Answer("matrix-stack/registration", "registration"),
    Answer("matrix-stack/behind-proxy", "behind_proxy", _boolean, _from_boolean),
    Answer("matrix-stack/database", "database"),
    Answer("matrix-stack/database-host", "database_host"),
    Answer("matrix-stack/database-port", "database_port", _number),
    Answer("matrix-stack/database-name", "database_name"),
    Answer("matrix-stack/database-user", "database_user"),
    Answer("matrix-stack/mail", "mail"),
    Answer("matrix-stack/mail-from", "mail_from"),
    Answer("matrix-stack/mail-relay-host", "mail_relay_host"),
    Answer("matrix-stack/mail-relay-port", "mail_relay_port", _number),
    Answer("matrix-stack/mail-relay-security", "mail_relay_security"),
    Answer("matrix-stack/mail-relay-user", "mail_relay_user"),
    Answer("matrix-stack/mail-password-reset", "mail_password_reset", _boolean, _from_boolean),
    Answer("matrix-stack/admin-email", "admin_email"),
    Answer("matrix-stack/workers", "workers"),
)

# Asked, but kept nowhere on disk: they trigger a one-time action (the bootstrap admin).
BOOTSTRAP_QUESTIONS = ("matrix-stack/admin-user", "matrix-stack/admin-password")
# Asked, written to a root-only file, then cleared from the debconf database.
DATABASE_PASSWORD_QUESTION = "matrix-stack/database-password"
MAIL_PASSWORD_QUESTION = "matrix-stack/mail-relay-password"

# Kept in stack.yaml only (no question yet): the outside proxy allowed to set X-Forwarded-*,
# Element's signing key URL and
# pinned fingerprint, and where "latest" is looked up (empty: derived from element_source).
FILE_ONLY_KEYS: tuple[str, ...] = (
    "proxy_addresses",
    "element_key_url",
    "element_key_fingerprint",
    "element_latest_url",
    # Peers also trusted as key servers (matrix-stack-admin federation allow --key-server).
    "federation_key_servers",
    # Synapse's SQLite file, where it already was on a server taken over (matrix-stack-admin adopt).
    "database_path",
    # The daily backup (matrix-stack-admin backup --schedule): off or daily, where, how many.
    "backup_schedule",
    "backup_dir",
    "backup_keep",
)

QUESTION_OF_KEY = {answer.key: answer.question for answer in ANSWERS}


class DebconfLike(Protocol):
    def get(self, question: str) -> str: ...

    def set(self, question: str, value: str) -> Any: ...


def yaml_from_debconf(debconf: DebconfLike) -> dict[str, Any]:
    """Return stack.yaml's content from the current debconf answers."""
    return {answer.key: answer.to_yaml(debconf.get(answer.question)) for answer in ANSWERS}


def debconf_from_yaml(stack: Mapping[str, Any]) -> dict[str, str]:
    """Return the debconf answer of every question kept in stack.yaml."""
    return {
        answer.question: answer.to_debconf(stack.get(answer.key))
        for answer in ANSWERS
        if answer.key in stack
    }
