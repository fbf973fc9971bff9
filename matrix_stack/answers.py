"""debconf answers <-> /etc/matrix-stack/stack.yaml <-> Settings, through one mapping table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from matrix_stack import settings as settings_module
from matrix_stack.errors import MatrixStackError, SettingsError
from matrix_stack.files import FileSpec, write_atomic
from matrix_stack.settings import Settings

STACK_PATH = Path("/etc/matrix-stack/stack.yaml")


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
)

# Asked, but kept nowhere on disk: they trigger a one-time action (the bootstrap admin).
BOOTSTRAP_QUESTIONS = ("matrix-stack/admin-user", "matrix-stack/admin-password")
# Asked, written to a root-only file, then cleared from the debconf database.
DATABASE_PASSWORD_QUESTION = "matrix-stack/database-password"

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


def explain(error: SettingsError, source: str) -> MatrixStackError:
    """Return the error naming the debconf question or the stack.yaml key the admin must fix."""
    if source == "debconf":
        question = QUESTION_OF_KEY.get(error.question, error.question)
        return SettingsError(
            question,
            error.value,
            f"{error.reason}; change it with: dpkg-reconfigure matrix-stack",
        )
    return SettingsError(
        f"{error.question} in {source}", error.value, f"{error.reason}; fix the file, then run: "
        "matrix-stack-admin apply"
    )


def load_settings(raw: Mapping[str, Any], source: str, root: Path = Path("/")) -> Settings:
    """Validate raw stack.yaml content into Settings; errors name where to fix them."""
    try:
        return settings_module.from_mapping(raw, root)
    except SettingsError as error:
        raise explain(error, source) from None


def read_stack(root: Path = Path("/")) -> dict[str, Any]:
    """Return stack.yaml's content, or raise a one-line error when it is missing or unreadable."""
    path = root / STACK_PATH.relative_to("/")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixStackError(
            f"{STACK_PATH} is missing; run: dpkg-reconfigure matrix-stack"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise MatrixStackError(f"{STACK_PATH}{where} is not valid YAML; fix it") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise MatrixStackError(f"{STACK_PATH} must be a mapping of setting: value")
    return content


STACK_HEADER = """\
# matrix-stack: the administrator's choices, one setting per line.
# debconf reads this file back before asking (dpkg-reconfigure matrix-stack),
# so edits here are kept. After editing, run: matrix-stack-admin apply
# Keep one 'key: value' per line (lists as [a, b]); see matrix-stack-admin(8).
"""


def _reads_back(line: str, expected: Mapping[str, Any]) -> bool:
    try:
        return bool(yaml.safe_load(line) == expected)
    except yaml.YAMLError:
        return False


def render_stack(stack: Mapping[str, Any]) -> str:
    """Return stack.yaml's text: the header, then one flat 'key: value' line per setting."""
    lines = [STACK_HEADER]
    for key in [answer.key for answer in ANSWERS] + list(FILE_ONLY_KEYS):
        if key not in stack:
            continue
        value = stack[key]
        if isinstance(value, (list, tuple)):
            value = list(value)
            # PyYAML quotes 'host:port' items although YAML reads them bare, and the config
            # script's sh reader only strips quotes around the whole value: write them bare
            # whenever that reads back the same.
            bare = f"{key}: [{', '.join(str(item) for item in value)}]"
            if _reads_back(bare, {key: value}):
                lines.append(bare + "\n")
                continue
        dumped = yaml.safe_dump(
            {key: value}, default_flow_style=True, width=10_000, sort_keys=False,
            allow_unicode=True,
        ).strip()
        # safe_dump in flow style wraps a single mapping in braces; keep the bare line.
        lines.append(dumped.removeprefix("{").removesuffix("}") + "\n")
    return "".join(lines)


def write_stack(stack: Mapping[str, Any], root: Path = Path("/")) -> bool:
    """Write stack.yaml (root:root 0644) if its settings changed; return whether it did."""
    path = root / STACK_PATH.relative_to("/")
    if path.exists():
        try:
            if read_stack(root) == dict(stack):
                return False
        except MatrixStackError:
            pass
    spec = FileSpec(STACK_PATH, render_stack(stack), 0o644, "root", "root")
    write_atomic(spec, root)
    return True
