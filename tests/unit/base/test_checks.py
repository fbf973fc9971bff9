"""checks: one result type; the line, the JSON and the exit status come from the same data."""

from __future__ import annotations

from matrix_stack.base.checks import Check, Status, Steps, exit_status, failures


def test_a_check_says_its_outcome_with_a_mark_and_the_hint_only_when_not_passed() -> None:
    assert Check("disk", True, "12 GiB free", "free some").line() == "✓ disk: 12 GiB free"
    assert Check("disk", True, "1 GiB free", "free some", warning=True).line() == (
        "! disk: 1 GiB free — free some"
    )
    assert Check("disk", False, "full", "free some").line() == "✗ disk: full — free some"


def test_a_federation_result_names_its_address_and_a_step_has_no_name() -> None:
    result = Check.of("tls", Status.FAIL, "self-signed", where="192.0.2.1:8448")
    assert (result.ok, result.warning, result.status) == (False, False, Status.FAIL)
    assert result.line() == "✗ 192.0.2.1:8448 tls: self-signed"
    assert Check("", True, "coturn is running").line() == "✓ coturn is running"


def test_the_json_and_the_exit_status_come_from_the_same_fields() -> None:
    checks = [Check("a", True, "fine"), Check("b", True, "hm", warning=True),
              Check("c", False, "broken", "fix it")]
    assert checks[2].as_json() == {"name": "c", "ok": False, "detail": "broken",
                                   "hint": "fix it", "warning": False}
    assert failures(checks) == [checks[2]]
    assert exit_status(checks) == 1 and exit_status(checks[:2]) == 0


def test_steps_print_each_step_as_it_comes_and_keep_them() -> None:
    lines: list[str] = []
    steps = Steps(lines.append)
    steps.ok("one")
    steps.warn("two")
    assert not steps.failed
    steps.fail("three")
    assert lines == ["✓ one", "! two", "✗ three"]
    assert steps.failed and [check.status for check in steps.checks] == [
        Status.PASS, Status.WARN, Status.FAIL
    ]
