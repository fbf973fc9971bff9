"""undo: files saved before a change and put back exactly (bytes, mode, owner, absence)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matrix_stack.base.files import FileSpec, Outcome, UcfState, apply_plan, plan_file, write_atomic
from matrix_stack.base.undo import Undo
from tests.unit.helpers import snapshot

TARGET = Path("/etc/matrix-stack/example.conf")
OTHER = Path("/etc/matrix-stack/other.conf")
OLD = "setting = old\n"
NEW = "setting = new\n"


def live(root: Path, path: Path = TARGET) -> Path:
    return root / str(path).lstrip("/")


def spec(text: str, mode: int = 0o640) -> FileSpec:
    return FileSpec(TARGET, text, mode, "root", "root")


def test_put_back_of_an_updated_file_gives_the_old_bytes_and_mode(tmp_path: Path) -> None:
    write_atomic(spec(OLD, 0o600), tmp_path)
    undo = Undo(tmp_path)
    undo.save(TARGET)
    write_atomic(spec(NEW, 0o644), tmp_path)

    assert undo.put_back() == ([TARGET], {})

    assert live(tmp_path).read_text() == OLD
    assert live(tmp_path).stat().st_mode & 0o777 == 0o600


def test_put_back_of_a_created_file_removes_it(tmp_path: Path) -> None:
    undo = Undo(tmp_path)
    undo.save(TARGET)
    plan = plan_file(spec(NEW), tmp_path, UcfState(tmp_path))
    assert plan.outcome is Outcome.CREATED
    apply_plan(plan, tmp_path)

    assert undo.put_back() == ([TARGET], {})

    assert not live(tmp_path).exists()


def test_put_back_of_unchanged_files_touches_nothing(tmp_path: Path) -> None:
    write_atomic(spec(OLD), tmp_path)
    undo = Undo(tmp_path)
    undo.save(TARGET, OTHER)
    before = snapshot(tmp_path)

    assert undo.put_back() == ([], {})
    assert snapshot(tmp_path) == before


def test_put_back_of_a_link_the_change_replaced_makes_the_link_again(tmp_path: Path) -> None:
    live(tmp_path).parent.mkdir(parents=True)
    live(tmp_path).symlink_to("/srv/example.conf")
    undo = Undo(tmp_path)
    undo.save(TARGET)
    write_atomic(spec(NEW), tmp_path)

    assert undo.put_back() == ([TARGET], {})

    assert os.readlink(live(tmp_path)) == "/srv/example.conf"


def test_the_first_save_of_a_file_is_the_one_put_back(tmp_path: Path) -> None:
    write_atomic(spec(OLD), tmp_path)
    undo = Undo(tmp_path)
    undo.save(TARGET)
    write_atomic(spec(NEW), tmp_path)
    undo.save(TARGET)
    write_atomic(spec("setting = newer\n"), tmp_path)

    undo.put_back()

    assert live(tmp_path).read_text() == OLD


def test_a_file_that_cannot_be_put_back_is_named_and_the_others_are_put_back(
    tmp_path: Path,
) -> None:
    write_atomic(spec(OLD), tmp_path)
    undo = Undo(tmp_path)
    undo.save(OTHER, TARGET)
    live(tmp_path).unlink()
    live(tmp_path).mkdir()
    (live(tmp_path) / "file").touch()
    live(tmp_path, OTHER).write_text("new\n")

    assert undo.put_back() == ([OTHER], {TARGET: "Is a directory"})

    assert not live(tmp_path, OTHER).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_put_back_gives_the_file_its_owner_again(tmp_path: Path) -> None:
    write_atomic(spec(OLD), tmp_path)
    os.chown(live(tmp_path), 12345, 23456)
    undo = Undo(tmp_path)
    undo.save(TARGET)
    write_atomic(spec(NEW), tmp_path)

    undo.put_back()

    status = live(tmp_path).stat()
    assert (status.st_uid, status.st_gid, live(tmp_path).read_text()) == (12345, 23456, OLD)
