"""debconf answers <-> /etc/matrix-stack/stack.yaml keys, through one mapping table.

stack.py reads, writes and validates the file itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from matrix_stack.core import settings as settings_module


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


# How each kind of setting crosses between a debconf answer and stack.yaml.
CONVERSIONS: dict[settings_module.Kind, tuple[Callable[[str], Any], Callable[[Any], str]]] = {
    settings_module.Kind.TEXT: (_text, _from_text),
    settings_module.Kind.BOOLEAN: (_boolean, _from_boolean),
    settings_module.Kind.LIST: (_word_list, _from_list),
    settings_module.Kind.NUMBER: (_number, _from_text),
}
PREFIX = "matrix-stack/"

# The one table, derived from the Settings declarations: question <-> stack.yaml key <-> how
# the value crosses between them. Keys are the question names with '-' turned into '_'
# (debian/matrix-stack.config relies on it; its list is filled in from here at build time).
ANSWERS: tuple[Answer, ...] = tuple(
    Answer(PREFIX + key.replace("_", "-"), key, *CONVERSIONS[spec.kind])
    for key, spec in settings_module.specs().items()
    if spec.asked
)

# Asked, but kept nowhere on disk: they trigger a one-time action (the bootstrap admin).
BOOTSTRAP_QUESTIONS = ("matrix-stack/admin-user", "matrix-stack/admin-password")
# Asked, written to a root-only file, then cleared from the debconf database.
DATABASE_PASSWORD_QUESTION = "matrix-stack/database-password"
MAIL_PASSWORD_QUESTION = "matrix-stack/mail-relay-password"

# Kept in stack.yaml only (no question): set by matrix-stack-admin or by hand.
FILE_ONLY_KEYS: tuple[str, ...] = tuple(
    key for key, spec in settings_module.specs().items() if not spec.asked
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


if __name__ == "__main__":
    # debian/rules: the questions the config script reads back from stack.yaml.
    print(" ".join(answer.question.removeprefix(PREFIX) for answer in ANSWERS))
