"""Errors raised deep in the package; only the entry points turn them into exit codes."""


class MatrixStackError(Exception):
    """An operation failed; the message is one line saying what failed and what to do."""

    exit_code = 1


class UsageError(MatrixStackError):
    """The command line or an answer is wrong."""

    exit_code = 2


class SettingsError(UsageError):
    """An answer (debconf question or stack.yaml key) is invalid."""

    def __init__(self, question: str, value: object, reason: str) -> None:
        self.question = question
        self.value = value
        self.reason = reason
        super().__init__(f"{question}: {value!r} {reason}")


class ValidationError(MatrixStackError):
    """A rendered configuration was refused by the program that reads it."""


class CommandError(MatrixStackError):
    """An external command failed."""


def ensure_root() -> None:
    """Refuse to run as anyone but root (the files and services are root's)."""
    import os

    if os.geteuid() != 0:
        raise MatrixStackError("this needs root: run it as root")
