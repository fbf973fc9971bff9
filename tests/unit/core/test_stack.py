"""stack: stack.yaml's reader and writer, and change(), the one way to change the stack."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base.errors import MatrixStackError, SettingsError, ValidationError
from matrix_stack.base.files import Plan, apply_plan, host_path
from matrix_stack.base.paths import STACK_PATH
from matrix_stack.core.apply import apply
from matrix_stack.core.settings import Settings
from matrix_stack.core.stack import change, current_settings, read_stack, write_stack
from tests.unit.helpers import BASE_STACK, FakeSystem, files_and_modes

PASSFILE = Path("/etc/matrix-stack/secrets/database.pgpass")
# What an admin may add by hand: change() must put exactly this back.
EDITED = b"# mine\nserver_name: matrix.example.org\nturn_listening_ip: 203.0.113.10\n" \
    b"turn_external_ip: 203.0.113.10\n"


def stack_file(root: Path) -> Path:
    return host_path(STACK_PATH, root)


def edited_root(root: Path) -> Path:
    stack_file(root).parent.mkdir(parents=True, exist_ok=True)
    stack_file(root).write_bytes(EDITED)
    stack_file(root).chmod(0o640)
    return root


def never(settings: Settings) -> list[str]:
    raise AssertionError("applied")


def test_change_writes_the_edited_stack_then_applies_its_settings(tmp_path: Path) -> None:
    edited_root(tmp_path)
    seen: list[tuple[str, dict[str, Any]]] = []

    def apply_settings(settings: Settings) -> list[str]:
        seen.append((settings.registration, read_stack(tmp_path)))
        return ["applied"]

    changed = change(lambda stack: {**stack, "registration": "token"}, root=tmp_path,
                     apply_settings=apply_settings)

    assert seen == [("token", {**BASE_STACK, "registration": "token"})]
    assert (changed.applied, changed.lines, changed.settings.registration) == (
        True, ["applied"], "token"
    )


def test_change_refused_by_validation_writes_nothing_and_applies_nothing(tmp_path: Path) -> None:
    edited_root(tmp_path)
    before = files_and_modes(tmp_path)

    with pytest.raises(SettingsError, match=f"registration in {STACK_PATH}"):
        change(lambda stack: {**stack, "registration": "sometimes"}, root=tmp_path,
               apply_settings=never)

    assert files_and_modes(tmp_path) == before


@pytest.mark.parametrize(
    "failure",
    [ValidationError("Apache refuses the configuration: x"),
     OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt(), RuntimeError("bug")],
    ids=["refused", "full-disk", "interrupted", "bug"],
)
def test_change_whose_apply_fails_puts_stack_yaml_back_byte_for_byte(
    tmp_path: Path, failure: BaseException
) -> None:
    edited_root(tmp_path)
    before = files_and_modes(tmp_path)

    def fail(settings: Settings) -> list[str]:
        assert read_stack(tmp_path)["registration"] == "token"
        raise failure

    with pytest.raises(type(failure)) as raised:
        change(lambda stack: {**stack, "registration": "token"}, root=tmp_path,
               apply_settings=fail)

    assert raised.value is failure
    assert files_and_modes(tmp_path) == before


def test_change_of_a_missing_stack_yaml_whose_apply_fails_leaves_none(tmp_path: Path) -> None:
    def fail(settings: Settings) -> list[str]:
        raise MatrixStackError("refused")

    with pytest.raises(MatrixStackError, match="^refused$"):
        change(lambda stack: {**stack, **BASE_STACK}, root=tmp_path, apply_settings=fail,
               missing_ok=True)

    assert not stack_file(tmp_path).exists()


def test_change_without_missing_ok_refuses_a_missing_stack_yaml(tmp_path: Path) -> None:
    with pytest.raises(MatrixStackError, match="stack.yaml is missing"):
        change(lambda stack: stack, root=tmp_path, apply_settings=never)


def test_change_whose_apply_fails_puts_the_files_it_keeps_back_too(tmp_path: Path) -> None:
    edited_root(tmp_path)
    host_path(PASSFILE, tmp_path).parent.mkdir(parents=True)
    host_path(PASSFILE, tmp_path).write_text("*:*:*:*:old\n")
    before = files_and_modes(tmp_path)

    def fail(settings: Settings) -> list[str]:
        host_path(PASSFILE, tmp_path).write_text("*:*:*:*:new\n")
        raise MatrixStackError("refused")

    with pytest.raises(MatrixStackError):
        change(lambda stack: {**stack, "registration": "token"}, root=tmp_path,
               apply_settings=fail, keeps=[PASSFILE])

    assert files_and_modes(tmp_path) == before


def test_change_only_if_changed_of_a_no_op_edit_validates_and_applies_nothing(
    tmp_path: Path,
) -> None:
    edited_root(tmp_path)
    before = files_and_modes(tmp_path)

    changed = change(lambda stack: stack, root=tmp_path, apply_settings=never,
                     only_if_changed=True)

    assert (changed.applied, changed.lines) == (False, [])
    assert files_and_modes(tmp_path) == before


def test_change_edits_a_copy_of_stack_yaml(tmp_path: Path) -> None:
    write_stack({**BASE_STACK, "federation_domains": ["a.example"]}, tmp_path)
    seen: list[dict[str, Any]] = []

    def edit(stack: dict[str, Any]) -> dict[str, Any]:
        seen.append(stack)
        stack["federation_domains"].append("b.example")
        return stack

    def fail(settings: Settings) -> list[str]:
        raise MatrixStackError("refused")

    with pytest.raises(MatrixStackError):
        change(edit, root=tmp_path, apply_settings=fail)

    assert read_stack(tmp_path)["federation_domains"] == ["a.example"]


def test_change_refused_by_apache_puts_stack_yaml_and_every_applied_file_back(
    applied_root: Path,
) -> None:
    edited_root(applied_root)
    before = files_and_modes(applied_root)
    system = FakeSystem(refusals={"validate_apache": ValidationError("Apache refuses: x")})

    def apply_settings(settings: Settings) -> list[str]:
        return apply(settings, root=applied_root, system=system).lines()

    with pytest.raises(ValidationError, match="^Apache refuses: x: every file is back"):
        change(lambda stack: {**stack, "turn_domain": "turn.example.org"}, root=applied_root,
               apply_settings=apply_settings)

    assert files_and_modes(applied_root) == before
    # Refused before any restart: every unit still runs the old files, none is restarted.
    assert system.calls[-1] == ("validate_apache",)


def test_change_whose_write_fails_puts_stack_yaml_and_every_written_file_back(
    applied_root: Path,
) -> None:
    edited_root(applied_root)
    before = files_and_modes(applied_root)
    system = FakeSystem()
    written: list[Path] = []

    def write_then_fail(plan: Plan, root: Path) -> None:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(plan.spec.path)
        apply_plan(plan, root)

    def apply_settings(settings: Settings) -> list[str]:
        return apply(settings, root=applied_root, system=system,
                     write_plan=write_then_fail).lines()

    with pytest.raises(MatrixStackError, match="No space left on device"):
        change(lambda stack: {**stack, "turn_domain": "turn.example.org"}, root=applied_root,
               apply_settings=apply_settings)

    assert len(written) == 1  # one file was written before the second failed
    assert files_and_modes(applied_root) == before
    assert [call for call in system.calls if call[0] == "restart"] == []


def test_change_whose_restart_fails_puts_everything_back_and_restarts_it_on_the_old_files(
    applied_root: Path,
) -> None:
    edited_root(applied_root)
    before = files_and_modes(applied_root)
    system = FakeSystem(failing=[{"coturn"}])

    def apply_settings(settings: Settings) -> list[str]:
        return apply(settings, root=applied_root, system=system).lines()

    with pytest.raises(MatrixStackError, match="coturn failed to start"):
        change(lambda stack: {**stack, "turn_domain": "turn.example.org"}, root=applied_root,
               apply_settings=apply_settings)

    assert files_and_modes(applied_root) == before
    restarts = [call for call in system.calls if call[0] == "restart"]
    # Restarted on the new files, then again on the old ones once they were back.
    assert len(restarts) == 2 and restarts[0] == restarts[1] and "coturn" in restarts[0]


def test_current_settings_are_those_of_stack_yaml(tmp_path: Path) -> None:
    write_stack({**BASE_STACK, "registration": "token"}, tmp_path)

    assert current_settings(tmp_path).registration == "token"
