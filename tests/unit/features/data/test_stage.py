"""restore_stage: the media store is unpacked beside the live one, out of Synapse's reach."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.features.data import stage as restore_stage
from matrix_stack.features.data.archive import FILES_PREFIX
from tests.unit.base.test_files import (
    ACCOUNT_UID,
    ServiceAccount,
    as_root,
    assert_untouched,
    plant_victims,
)
from tests.unit.features.data.test_backup import manifest

MTIME = 1_700_000_000
# (path below the media store, mode, content: None for a directory)
MEDIA = [
    ("", 0o750, None),
    ("local_content", 0o750, None),
    ("local_content/ab", 0o750, None),
    ("local_content/ab/cd", 0o640, b"\x89PNG picture"),
    ("local_thumbnails/ab/cd-32", 0o640, b"thumbnail"),  # its directories are not archived
]


def media_archive(tmp_path: Path) -> tuple[Path, Path]:
    """Return an archive of a media store owned by matrix-synapse, and where it goes."""
    home = tmp_path / "lib"
    home.mkdir()
    os.chown(home, ACCOUNT_UID, 0)
    media = home / "media"
    archive = tmp_path / "backup.tar"
    with tarfile.open(archive, "w:", format=tarfile.PAX_FORMAT) as tar:
        for relative, mode, data in MEDIA:
            info = tarfile.TarInfo(FILES_PREFIX + str(media / relative).lstrip("/"))
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.mode, info.mtime, info.size = mode, MTIME, len(data or b"")
            info.uname = info.gname = "matrix-synapse"
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive, media


def stage_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> restore_stage.Staged:
    archive, media = media_archive(tmp_path)
    ids = {"root": 0, "matrix-synapse": ACCOUNT_UID}
    monkeypatch.setattr(restore_stage, "lookup_ids", lambda owner, group: (ids[owner], ids[group]))
    (tmp_path / "keep").mkdir()
    return restore_stage.stage(archive, manifest(media_path=str(media)), "STAMP",
                               tmp_path / "keep")


@as_root
def test_stage_unpacks_media_with_their_owner_mode_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = stage_media(tmp_path, monkeypatch)

    assert staged.media is not None and staged.media.parent == tmp_path / "lib"
    found = {}
    for relative, _mode, data in MEDIA:
        status = (staged.media / relative).lstat()
        found[relative] = (status.st_uid, stat.S_IMODE(status.st_mode))
        if data is not None:
            assert (staged.media / relative).read_bytes() == data
            assert status.st_mtime == MTIME
    assert found == {relative: (ACCOUNT_UID, mode) for relative, mode, _data in MEDIA}
    assert (staged.media / "local_thumbnails").stat().st_uid == 0


@as_root
def test_stage_follows_no_link_synapses_account_plants_in_the_media_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim, victim_directory = plant_victims(tmp_path)
    account = ServiceAccount(monkeypatch, tmp_path / "lib", {
        "local_content": victim_directory, "ab": victim_directory, "cd": victim,
        "local_thumbnails": victim_directory, "cd-32": victim,
    })

    with contextlib.suppress(OSError):
        stage_media(tmp_path, monkeypatch)
    account.act()

    assert_untouched(victim, victim_directory)


@as_root
def test_stage_follows_no_link_swapped_in_for_the_media_stage_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim, victim_directory = plant_victims(tmp_path)
    ServiceAccount(monkeypatch, tmp_path / "lib", {".media.restore-*": victim_directory})

    with contextlib.suppress(OSError, MatrixStackError):
        stage_media(tmp_path, monkeypatch)

    assert_untouched(victim, victim_directory)
