"""restore: the free space each staging destination needs is checked before anything is copied."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from types import SimpleNamespace

import pytest

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import POSTGRESQL_DATA_DIR
from matrix_stack.core import stack as stack_file
from matrix_stack.features.data import restore
from matrix_stack.features.data.archive import POSTGRESQL_MEMBER, SQLITE_MEMBER, Manifest
from matrix_stack.features.data.stage import ConfigFile
from tests.unit.features.data.test_backup import manifest

MIB = 2**20


def archive_of(tmp_path: Path, engine: str = "sqlite") -> Manifest:
    """A manifest of 5 MiB of media and a 4 MiB database under tmp_path/lib."""
    media = tmp_path / "lib" / "media"
    database = SQLITE_MEMBER if engine == "sqlite" else POSTGRESQL_MEMBER
    return manifest(
        engine=engine,
        media_path=str(media),
        sqlite_path=str(tmp_path / "lib" / "homeserver.db") if engine == "sqlite" else "",
        database_bytes=4 * MIB,
        members={
            database: {"sha256": "0", "size": 2 * MIB},
            "files" + str(media / "local_content" / "a"): {"sha256": "0", "size": 3 * MIB},
            "files" + str(media / "local_content" / "b"): {"sha256": "0", "size": 2 * MIB},
            "files/etc/matrix-stack/stack.yaml": {"sha256": "0", "size": 100},
        },
    )


def test_staging_needs_name_each_destination_of_a_sqlite_archive(tmp_path: Path) -> None:
    needs = restore.staging_needs(archive_of(tmp_path), tmp_path / "keep")
    assert needs == {tmp_path / "lib": 9 * MIB}


def test_staging_needs_name_each_destination_of_a_postgresql_archive(tmp_path: Path) -> None:
    needs = restore.staging_needs(archive_of(tmp_path, "postgresql"), tmp_path / "keep")
    assert needs == {tmp_path / "lib": 5 * MIB, tmp_path / "keep": 2 * MIB,
                     POSTGRESQL_DATA_DIR: 4 * MIB}


def fake_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int) -> list[str]:
    """Run restore() up to staging, on a filesystem with free bytes; return what was staged."""
    archive = archive_of(tmp_path)
    monkeypatch.setattr(restore, "verify", lambda _archive, _progress: archive)
    monkeypatch.setattr(restore, "check_paths", lambda _manifest, _archive: None)
    monkeypatch.setattr(stack_file, "read_stack", lambda: {"server_name": archive.server_name})
    monkeypatch.setattr(restore, "KEEP_ROOT", tmp_path / "keep")
    staged: list[str] = []

    def stage(*_arguments: object) -> None:
        staged.append("staged")
        raise MatrixStackError("stopped after staging")

    monkeypatch.setattr(restore, "stage", stage)
    monkeypatch.setattr(os, "statvfs", lambda _path: SimpleNamespace(
        f_frsize=1, f_blocks=100 * MIB, f_bfree=free, f_bavail=free))
    return staged


def test_restore_without_room_beside_the_media_store_refuses_before_copying_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = fake_restore(tmp_path, monkeypatch, free=8 * MIB)

    with pytest.raises(MatrixStackError) as refusal:
        restore.restore(Path("backup.tar"), lambda _line: None)

    assert str(refusal.value).startswith(
        f"{tmp_path} has 8 MiB free; the backup needs about 10 MiB")
    assert "\n" not in str(refusal.value)
    assert staged == []
    assert not (tmp_path / "keep").exists()


def test_restore_with_room_goes_on_to_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = fake_restore(tmp_path, monkeypatch, free=10 * MIB)

    with pytest.raises(MatrixStackError, match="stopped after staging"):
        restore.restore(Path("backup.tar"), lambda _line: None)

    assert staged == ["staged"]


def test_a_config_written_over_a_planted_link_replaces_the_link_and_undo_puts_it_back(
    tmp_path: Path,
) -> None:
    owner = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    shadow = tmp_path / "shadow"
    shadow.write_bytes(b"root's\n")
    service = tmp_path / "etc-matrix-synapse"
    service.mkdir()
    live = service / "homeserver.yaml"
    live.symlink_to(shadow)
    swap = restore.Swap(tmp_path / "keep", "STAMP")

    swap.config(live, ConfigFile(b"restored\n", 0o600, owner, group))

    assert live.read_bytes() == b"restored\n" and not live.is_symlink()
    assert shadow.read_bytes() == b"root's\n"
    assert not (tmp_path / "keep").exists()  # a link is not kept as a copy of its target
    assert swap.roll_back() == []
    assert live.is_symlink() and os.readlink(live) == str(shadow)
    assert shadow.read_bytes() == b"root's\n"


def test_a_config_replaced_is_kept_and_put_back_on_roll_back(tmp_path: Path) -> None:
    owner = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    live = tmp_path / "etc/matrix-synapse/homeserver.yaml"
    live.parent.mkdir(parents=True)
    live.write_bytes(b"before\n")
    live.chmod(0o640)
    swap = restore.Swap(tmp_path / "keep", "STAMP")

    swap.config(live, ConfigFile(b"restored\n", 0o600, owner, group))

    kept = tmp_path / "keep/files" / str(live).lstrip("/")
    assert kept.read_bytes() == b"before\n" and kept.stat().st_mode & 0o777 == 0o640
    assert live.read_bytes() == b"restored\n" and live.stat().st_mode & 0o777 == 0o600
    assert swap.roll_back() == []
    assert live.read_bytes() == b"before\n" and live.stat().st_mode & 0o777 == 0o640
