"""One check result for doctor, the federation check and the TURN test.

The same data gives the text line (✓ passed, ! warning, ✗ failed), the JSON object and the
exit status, so no caller reads a mark back out of text.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"


MARKS = {Status.PASS: "✓", Status.FAIL: "✗", Status.WARN: "!"}


@dataclass(frozen=True)
class Check:
    """One finding: ok, a warning (still ok), or a failure with a hint.

    name: what was checked ('' for a step of a longer test); where: the address it was made
    against, when there are several.
    """

    name: str
    ok: bool
    detail: str
    hint: str = ""
    warning: bool = False
    where: str = ""

    @classmethod
    def of(cls, name: str, status: Status, detail: str, where: str = "", hint: str = "") -> Check:
        return cls(name, status is not Status.FAIL, detail, hint, status is Status.WARN, where)

    @property
    def status(self) -> Status:
        if not self.ok:
            return Status.FAIL
        return Status.WARN if self.warning else Status.PASS

    def text(self) -> str:
        """Return the finding without its mark: where, name, detail, and the hint if it failed."""
        where = f"{self.where} " if self.where else ""
        name = f"{self.name}: " if self.name else ""
        hint = f" — {self.hint}" if self.hint and self.status is not Status.PASS else ""
        return f"{where}{name}{self.detail}{hint}"

    def line(self) -> str:
        return f"{MARKS[self.status]} {self.text()}"

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "hint": self.hint,
                "warning": self.warning}


def failures(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if not check.ok]


def exit_status(checks: Iterable[Check]) -> int:
    """Return 0 when every check passed (warnings pass), else 1."""
    return 1 if failures(checks) else 0


class Steps:
    """The steps of a longer test, each printed as it is found (out) and kept in order."""

    def __init__(self, out: Callable[[str], None] = lambda _line: None) -> None:
        self.out = out
        self.checks: list[Check] = []

    def add(self, check: Check) -> None:
        self.checks.append(check)
        self.out(check.line())

    def ok(self, text: str) -> None:
        self.add(Check("", True, text))

    def fail(self, text: str) -> None:
        self.add(Check("", False, text))

    def warn(self, text: str) -> None:
        self.add(Check("", True, text, warning=True))

    @property
    def failed(self) -> bool:
        return bool(failures(self.checks))
