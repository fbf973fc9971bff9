"""The backup archive: what goes in, how it is checked, what restore accepts."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import os
import sqlite3
import tarfile
from contextlib import closing
from pathlib import Path

import pytest

from matrix_stack.base.errors import MatrixStackError, SettingsError
from matrix_stack.base.paths import DEFAULT_SIGNING_KEY
from matrix_stack.cli import doctor
from matrix_stack.core.settings import BackupSchedule, from_mapping
from matrix_stack.features.data import archive as backup_archive
from matrix_stack.features.data import backup, restore
from matrix_stack.features.data import stage as restore_stage
from matrix_stack.features.data.archive import ArchiveWriter, Manifest
from matrix_stack.features.data.counts import Counts, count_sqlite

NOW = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=datetime.UTC)


def manifest(**changes: object) -> Manifest:
    values: dict[str, object] = {
        "server_name": "matrix.example.org",
        "engine": "sqlite",
        "created": "2026-11-27T12:00:00Z",
        "media_path": "/var/lib/matrix-synapse/media",
        "signing_key_path": "/etc/matrix-synapse/homeserver.signing.key",
        "counts": {"users": 2, "rooms": 1},
        "sqlite_path": "/var/lib/matrix-synapse/homeserver.db",
    }
    values.update(changes)
    return Manifest(**values)  # type: ignore[arg-type]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A small valid archive: a database member and a tree of files."""
    tree = tmp_path / "tree"
    (tree / "media" / "local_content").mkdir(parents=True)
    (tree / "media" / "local_content" / "abc").write_bytes(b"\x89PNG picture")
    (tree / "media" / "empty").write_bytes(b"")
    database = tmp_path / "homeserver.db.gz"
    database.write_bytes(gzip.compress(b"SQLite format 3\0"))
    path = tmp_path / "backup.tar"
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        writer = ArchiveWriter(tar)
        writer.add_file(database, backup_archive.SQLITE_MEMBER)
        assert writer.add_tree(tree / "media") == 2
        writer.finish(manifest())
    return path


def rewrite(source: Path, target: Path, change: object) -> Path:
    """Copy an archive member by member, letting change() alter (name, data) or drop one."""
    with tarfile.open(source) as old, tarfile.open(target, "w:", format=tarfile.PAX_FORMAT) as new:
        for member in old:
            stream = old.extractfile(member)
            data = stream.read() if stream else None
            result = change(member, data)  # type: ignore[operator]
            if result is None:
                continue
            member, data = result
            if data is not None:
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    return target


def test_a_written_archive_verifies_with_every_member_in_its_manifest(archive: Path) -> None:
    found = backup_archive.verify(archive)
    assert found.server_name == "matrix.example.org"
    assert backup_archive.SQLITE_MEMBER in found.members
    media = [name for name in found.members if name.startswith("files/")]
    assert len(media) == 2
    assert all(name.startswith(backup_archive.FILES_PREFIX) for name in media)
    with tarfile.open(archive) as tar:
        assert tar.getnames()[-1] == backup_archive.MANIFEST


def test_one_changed_byte_is_refused(archive: Path, tmp_path: Path) -> None:
    def flip(member: tarfile.TarInfo, data: bytes | None) -> object:
        if data and member.name.endswith("abc"):
            data = data[:-1] + b"X"
        return member, data

    corrupt = rewrite(archive, tmp_path / "corrupt.tar", flip)
    with pytest.raises(MatrixStackError, match="does not match its checksum"):
        backup_archive.verify(corrupt)


def test_a_missing_member_is_refused(archive: Path, tmp_path: Path) -> None:
    cut = rewrite(archive, tmp_path / "cut.tar",
                  lambda m, d: None if m.name.endswith("abc") else (m, d))
    with pytest.raises(MatrixStackError, match="is missing"):
        backup_archive.verify(cut)


@pytest.mark.parametrize("where", ["abc", backup_archive.MANIFEST])
def test_an_archive_cut_short_is_refused(archive: Path, tmp_path: Path, where: str) -> None:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(where))
    short = tmp_path / "short.tar"
    short.write_bytes(archive.read_bytes()[: member.offset_data + 3])
    with pytest.raises(MatrixStackError, match="no manifest|damaged|not valid"):
        backup_archive.verify(short)


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "/etc/passwd", "files/../../etc/passwd", "other/thing"]
)
def test_names_outside_the_archive_layout_are_refused(
    archive: Path, tmp_path: Path, name: str
) -> None:
    def rename(member: tarfile.TarInfo, data: bytes | None) -> object:
        if member.name.endswith("abc"):
            member.name = name
        return member, data

    bad = rewrite(archive, tmp_path / "bad.tar", rename)
    with pytest.raises(MatrixStackError, match="unexpected member|not in the manifest"):
        backup_archive.verify(bad)


def test_a_symbolic_link_member_is_refused(archive: Path, tmp_path: Path) -> None:
    def add_link(member: tarfile.TarInfo, data: bytes | None) -> object:
        if member.name.endswith("abc"):
            member.type = tarfile.SYMTYPE
            member.linkname = "/etc/shadow"
            return member, None
        return member, data

    bad = rewrite(archive, tmp_path / "link.tar", add_link)
    with pytest.raises(MatrixStackError, match="not a regular file"):
        backup_archive.verify(bad)


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    data = manifest(format=99).to_json()
    with pytest.raises(MatrixStackError, match="format 99"):
        Manifest.from_json(data, tmp_path / "x.tar")


def test_archive_names_match_the_prune_pattern() -> None:
    name = backup.archive_name("matrix.example.org", NOW)
    assert name == "matrix-stack-backup-matrix.example.org-20261127T120000Z.tar"
    match = backup.NAME_PATTERN.fullmatch(name)
    assert match is not None and match["server"] == "matrix.example.org"


def test_prune_keeps_the_newest_of_this_server_only(tmp_path: Path) -> None:
    names = [backup.archive_name("a.example", NOW - datetime.timedelta(days=day))
             for day in range(5)]
    other = backup.archive_name("b.example", NOW - datetime.timedelta(days=9))
    for name in [*names, other, "notes.txt"]:
        (tmp_path / name).write_text("x")
    removed = backup.prune(tmp_path, "a.example", 2)
    assert sorted(path.name for path in removed) == sorted(names[2:])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [*names[:2], other, "notes.txt"]
    )


def test_the_sqlite_copy_is_complete_and_counted(tmp_path: Path) -> None:
    live = tmp_path / "homeserver.db"
    with closing(sqlite3.connect(live)) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
        connection.execute("CREATE TABLE rooms (room_id TEXT)")
        connection.executemany("INSERT INTO users VALUES (?)", [("@a:x",), ("@b:x",)])
        connection.execute("INSERT INTO rooms VALUES ('!r:x')")
        connection.commit()
        # Still open, as Synapse keeps it: the online backup copies it consistently.
        stage = tmp_path / "stage"
        stage.mkdir()
        compressed, counts, size = backup.copy_sqlite(live, stage)
    assert counts == Counts(users=2, rooms=1)
    unpacked = tmp_path / "copy.db"
    unpacked.write_bytes(gzip.decompress(compressed.read_bytes()))
    assert size == unpacked.stat().st_size
    assert count_sqlite(unpacked) == counts
    assert not (stage / "homeserver.db").exists()


def test_layout_reads_sqlite_and_local_postgresql_and_refuses_remote() -> None:
    sqlite = backup.Layout.read({"database": {"name": "sqlite3", "args": {
        "database": "/var/lib/matrix-synapse/homeserver.db"}},
        "media_store_path": "/srv/media"})
    assert sqlite.engine == "sqlite"
    assert sqlite.media_path == Path("/srv/media")
    assert sqlite.signing_key_path == DEFAULT_SIGNING_KEY
    local = backup.Layout.read({"database": {"name": "psycopg2", "args": {
        "database": "matrix_synapse", "host": "/var/run/postgresql"}}})
    assert (local.engine, local.sqlite_path) == ("postgresql", None)
    with pytest.raises(MatrixStackError, match="back it up where it runs"):
        backup.Layout.read({"database": {"name": "psycopg2", "args": {
            "database": "synapse", "host": "db.example.org"}}})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/matrix-stack/stack.yaml", True),
        ("/etc/matrix-stack/secrets/turn_shared_secret", True),
        ("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml", True),
        ("/etc/matrix-synapse/homeserver.signing.key", True),
        ("/etc/apache2/sites-available/matrix-stack.conf", True),
        ("/etc/matrix-synapse/homeserver.yaml", False),
        ("/etc/matrix-synapse/log.yaml", False),
        ("/etc/matrix-synapse/conf.d/notes.txt", False),
        ("/etc/shadow", False),
    ],
)
def test_which_archived_files_are_written_back(path: str, expected: bool) -> None:
    assert restore_stage.restorable(Path(path), manifest()) is expected


@pytest.mark.parametrize(
    "changes",
    [
        {"media_path": "/etc"},
        {"media_path": "/var/lib/matrix-synapse/../../etc"},
        {"signing_key_path": "/root/.ssh/authorized_keys"},
        {"sqlite_path": "relative.db"},
    ],
)
def test_an_archive_cannot_place_data_outside_synapse(
    changes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup.Layout, "read", classmethod(lambda cls: (_ for _ in ()).throw(
        MatrixStackError("no synapse"))))
    with pytest.raises(MatrixStackError, match="refused"):
        restore.check_paths(manifest(**changes), Path("/tmp/x.tar"))
    restore.check_paths(manifest(), Path("/tmp/x.tar"))


def test_backup_settings_are_checked() -> None:
    settings = from_mapping({"server_name": "m.example.org"})
    assert settings.backup_schedule is BackupSchedule.OFF
    assert (settings.backup_dir, settings.backup_keep) == ("/var/backups/matrix-stack", 7)
    chosen = from_mapping({"server_name": "m.example.org", "backup_schedule": "daily",
                           "backup_dir": "/srv/backups/", "backup_keep": "30"})
    assert (chosen.backup_schedule, chosen.backup_dir, chosen.backup_keep) == (
        BackupSchedule.DAILY, "/srv/backups", 30)
    for key, value in [("backup_keep", 0), ("backup_keep", "many"), ("backup_keep", True),
                       ("backup_dir", "backups"), ("backup_dir", "/srv/../etc"),
                       ("backup_schedule", "hourly")]:
        with pytest.raises(SettingsError, match=key):
            from_mapping({"server_name": "m.example.org", key: value})


def test_doctor_fails_a_late_daily_backup_only(monkeypatch: pytest.MonkeyPatch) -> None:
    daily = from_mapping({"server_name": "m.example.org", "backup_schedule": "daily"})
    off = from_mapping({"server_name": "m.example.org", "backup_schedule": "off"})
    monkeypatch.setattr(backup, "last_backup", lambda: None)
    assert not doctor.check_backup(daily)[0].ok
    assert doctor.check_backup(off)[0].warning
    monkeypatch.setattr(backup, "last_backup", lambda: (Path("/b/x.tar"), 1000.0))
    fresh = doctor.check_backup(daily, now=1000.0 + 3600)[0]
    assert fresh.ok and not fresh.warning and "1 h ago" in fresh.detail
    late = doctor.check_backup(daily, now=1000.0 + 72 * 3600)[0]
    assert not late.ok
    assert doctor.check_backup(off, now=1000.0 + 72 * 3600)[0].warning


def test_an_archive_whose_stack_and_database_disagree_is_refused() -> None:
    sqlite = from_mapping({"server_name": "m.example.org"})
    local = from_mapping({"server_name": "m.example.org", "database": "postgresql"})
    remote = from_mapping({"server_name": "m.example.org", "database": "postgresql",
                           "database_host": "db.example.org"})
    restore.check_engine(sqlite, manifest())
    restore.check_engine(local, manifest(engine="postgresql"))
    for settings, engine in ((sqlite, "postgresql"), (local, "sqlite"), (remote, "postgresql")):
        with pytest.raises(MatrixStackError, match="not an archive this restores"):
            restore.check_engine(settings, manifest(engine=engine))


def swap_in_a_link_after_lstat(
    monkeypatch: pytest.MonkeyPatch, path: Path, secret: Path
) -> None:
    """Replace path by a link to secret once it has been looked at, as its owner could."""
    real_lstat = os.lstat

    def lstat(name: object, *arguments: object, **options: object) -> os.stat_result:
        status = real_lstat(name, *arguments, **options)  # type: ignore[arg-type]
        if str(name) == str(path) and not path.is_symlink():
            path.unlink()
            path.symlink_to(secret)
        return status

    monkeypatch.setattr(os, "lstat", lstat)


def test_a_file_swapped_for_a_link_while_added_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:SECRET")
    media = tmp_path / "media"
    media.mkdir()
    (media / "picture").write_bytes(b"a picture!!")  # as long as the secret
    swap_in_a_link_after_lstat(monkeypatch, media / "picture", secret)
    path = tmp_path / "backup.tar"

    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        writer = ArchiveWriter(tar)
        with contextlib.suppress(MatrixStackError):
            writer.add_file(media / "picture", "files/media/picture")
        with contextlib.suppress(MatrixStackError):
            writer.add_tree(media)

    assert b"SECRET" not in path.read_bytes()


def test_a_directory_swapped_for_a_link_during_the_walk_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "root-only"
    secrets.mkdir()
    (secrets / "key").write_bytes(b"SECRET")
    media = tmp_path / "media"
    (media / "thumbnails").mkdir(parents=True)
    (media / "thumbnails" / "key").write_bytes(b"thumb!")
    (media / "first").write_bytes(b"first")
    path = tmp_path / "backup.tar"
    real_add = ArchiveWriter._add_regular

    def swap_then_add(self: ArchiveWriter, name: Path, member: str, *rest: int | None) -> bool:
        if member.endswith("/first"):  # the top's files come before its subdirectories
            (media / "thumbnails").rename(tmp_path / "moved")
            (media / "thumbnails").symlink_to(secrets)
        return real_add(self, name, member, *rest)

    monkeypatch.setattr(ArchiveWriter, "_add_regular", swap_then_add)
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        files = ArchiveWriter(tar).add_tree(media)

    assert files == 1
    assert b"SECRET" not in path.read_bytes()


def test_a_media_store_linked_by_root_is_backed_up_under_its_own_name(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    (disk / "local_content").mkdir(parents=True)
    (disk / "local_content" / "a").write_bytes(b"a")
    (tmp_path / "media").symlink_to(disk)
    path = tmp_path / "backup.tar"

    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        assert ArchiveWriter(tar).add_tree(tmp_path / "media") == 1
    with tarfile.open(path) as tar:
        names = tar.getnames()

    top = backup_archive.files_member(tmp_path / "media")
    assert names == [top, f"{top}/local_content", f"{top}/local_content/a"]


def test_adding_a_link_or_other_non_file_as_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(b"secret")
    (tmp_path / "directory").mkdir()
    os.mkfifo(tmp_path / "fifo")
    with tarfile.open(tmp_path / "backup.tar", "w:") as tar:
        writer = ArchiveWriter(tar)
        for name in ("key", "directory", "fifo"):
            with pytest.raises(MatrixStackError, match="not a regular file"):
                writer.add_file(tmp_path / name, f"files/{name}")
        assert writer.members == {}
