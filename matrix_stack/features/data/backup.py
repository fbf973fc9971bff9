"""matrix-stack-admin backup: one archive with everything needed to rebuild this server.

Synapse keeps running: SQLite is copied with its online backup API and PostgreSQL with
pg_dump, both consistent snapshots. The archive is written under a temporary name in the
target directory and renamed only when complete, so a failed backup leaves nothing behind.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matrix_stack.base import files
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import APACHE_SITE_PATH as APACHE_SITE
from matrix_stack.base.paths import (
    DEFAULT_MEDIA_PATH,
    DEFAULT_SIGNING_KEY,
    LAST_BACKUP_PATH,
    STACK_DIR,
    SYNAPSE_DIR,
)
from matrix_stack.base.run import run, run_streaming
from matrix_stack.core import postgres
from matrix_stack.features.data.archive import (
    POSTGRESQL_MEMBER,
    SQLITE_MEMBER,
    ArchiveWriter,
    Manifest,
    files_member,
)
from matrix_stack.features.data.counts import Counts, count_postgresql, count_sqlite
from matrix_stack.synapse.config import read_merged_config

LOCK_PATH = Path("/run/lock/matrix-stack-backup.lock")
LOCAL_SOCKETS = ("", postgres.SOCKET_DIR, "/run/postgresql")
NAME_PATTERN = re.compile(
    r"matrix-stack-backup-(?P<server>[a-z0-9.-]+)-(?P<stamp>\d{8}T\d{6}Z)\.tar"
)


@dataclass(frozen=True)
class Layout:
    """Where this host keeps Synapse's data, read from Synapse's merged configuration."""

    engine: str
    sqlite_path: Path | None
    media_path: Path
    signing_key_path: Path

    @classmethod
    def read(cls, config: dict[str, Any] | None = None) -> Layout:
        config = read_merged_config() if config is None else config
        database = config.get("database") or {}
        name = database.get("name", "sqlite3")
        arguments = database.get("args") or {}
        if name == "sqlite3":
            engine, sqlite = "sqlite", Path(str(arguments.get("database", "")))
        elif name == "psycopg2":
            host = str(arguments.get("host", ""))
            if host not in LOCAL_SOCKETS or arguments.get("database") != postgres.DATABASE:
                raise MatrixStackError(
                    f"Synapse uses PostgreSQL database {arguments.get('database')} on "
                    f"{host or 'localhost'}: back it up where it runs (pg_dump -Fc); this "
                    "command backs up the local database matrix_synapse only"
                )
            engine, sqlite = "postgresql", None
        else:
            raise MatrixStackError(f"Synapse's database engine {name} is not one this backs up")
        return cls(
            engine=engine,
            sqlite_path=sqlite,
            media_path=Path(str(config.get("media_store_path") or DEFAULT_MEDIA_PATH)),
            signing_key_path=Path(str(config.get("signing_key_path") or DEFAULT_SIGNING_KEY)),
        )


@contextmanager
def exclusive_lock() -> Iterator[None]:
    """Let one backup or restore run at a time (the daily timer and an admin may collide)."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with files.exclusive_lock(
        LOCK_PATH, "another backup or restore is running; wait for it to finish"
    ):
        yield


def archive_name(server_name: str, now: datetime.datetime) -> str:
    return f"matrix-stack-backup-{server_name}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar"


def tree_size(top: Path) -> int:
    total = 0
    for directory, _subdirectories, names in os.walk(top):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue
    return total


def database_size(layout: Layout) -> int:
    """Return the database's size in bytes (the SQLite file, or pg_database_size)."""
    if layout.sqlite_path is not None:
        return layout.sqlite_path.stat().st_size if layout.sqlite_path.exists() else 0
    return int(postgres.query(f"SELECT pg_database_size('{postgres.DATABASE}')"))


def check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise MatrixStackError(
            f"{directory} has {free // 2**20} MiB free; the backup needs about "
            f"{needed // 2**20} MiB: free some space or give another directory"
        )


def copy_sqlite(source: Path, stage: Path) -> tuple[Path, Counts, int]:
    """Copy the live SQLite database consistently and gzip it; return it, counts, raw size."""
    copy = stage / "homeserver.db"
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as live, closing(
        sqlite3.connect(copy)
    ) as target:
        live.backup(target)
    counts = count_sqlite(copy, copy=True)
    size = copy.stat().st_size
    compressed = stage / "homeserver.db.gz"
    with copy.open("rb") as raw, gzip.open(compressed, "wb", compresslevel=6) as packed:
        shutil.copyfileobj(raw, packed, 1 << 20)
    copy.unlink()
    return compressed, counts, size


def dump_postgresql(stage: Path) -> tuple[Path, Counts]:
    """Dump the local database with pg_dump -Fc (compressed, consistent); return it, counts."""
    counts = count_postgresql()
    dump = stage / "matrix_synapse.pgdump"
    with dump.open("wb") as output:
        run_streaming(["pg_dump", "-Fc", "-d", postgres.DATABASE], stdout=output,
                      user="postgres")
    return dump, counts


def package_versions() -> dict[str, str]:
    versions = {}
    for package in ("matrix-stack", "matrix-synapse", "matrix-synapse-py3"):
        result = run(["dpkg-query", "-W", "-f", "${Version}", package], check=False,
                     timeout=60)
        if result.returncode == 0 and result.stdout:
            versions[package] = result.stdout
    return versions


def create(
    directory: Path,
    server_name: str,
    progress: Callable[[str], None],
    now: datetime.datetime | None = None,
) -> tuple[Path, Manifest]:
    """Write a complete archive into directory; return its path and manifest."""
    now = now or datetime.datetime.now(datetime.UTC)
    layout = Layout.read()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    media_size = tree_size(layout.media_path) if layout.media_path.is_dir() else 0
    database_bytes = database_size(layout)
    check_free_space(directory, database_bytes + media_size + 2**20)
    final = directory / archive_name(server_name, now)
    descriptor, partial_name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".partial")
    partial = Path(partial_name)
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".stage-") as stage_name:
            stage = Path(stage_name)
            if layout.sqlite_path is not None:
                progress(f"copying the SQLite database {layout.sqlite_path}")
                database, counts, database_bytes = copy_sqlite(layout.sqlite_path, stage)
                member = SQLITE_MEMBER
            else:
                progress(f"dumping the PostgreSQL database {postgres.DATABASE} (pg_dump -Fc)")
                database, counts = dump_postgresql(stage)
                member = POSTGRESQL_MEMBER
            with os.fdopen(descriptor, "wb") as stream, tarfile.open(
                fileobj=stream, mode="w:", format=tarfile.PAX_FORMAT
            ) as tar:
                writer = ArchiveWriter(tar)
                writer.add_file(database, member)
                progress("adding the configuration, secrets and signing key")
                for top in (STACK_DIR, SYNAPSE_DIR):
                    writer.add_tree(top)
                for single in (APACHE_SITE, layout.signing_key_path):
                    if single.is_file() and files_member(single) not in writer.members:
                        writer.add_file(single, files_member(single))
                progress(f"adding the media store {layout.media_path} ({media_size // 2**20} MiB)")
                files = writer.add_tree(layout.media_path, progress)
                manifest = Manifest(
                    server_name=server_name,
                    engine=layout.engine,
                    created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    media_path=str(layout.media_path),
                    signing_key_path=str(layout.signing_key_path),
                    counts=asdict(counts),
                    database_bytes=database_bytes,
                    sqlite_path=str(layout.sqlite_path or ""),
                    versions=package_versions(),
                )
                manifest.counts["media_files"] = files
                writer.finish(manifest)
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(partial, 0o600)
        os.rename(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    record_last_backup(final, now)
    return final, manifest


def record_last_backup(archive: Path, now: datetime.datetime) -> None:
    LAST_BACKUP_PATH.parent.mkdir(parents=True, exist_ok=True)
    LAST_BACKUP_PATH.write_text(
        json.dumps({"archive": str(archive), "created": now.timestamp()}) + "\n",
        encoding="utf-8",
    )


def last_backup() -> tuple[Path, float] | None:
    """Return the newest archive written by backup and when, if it still exists."""
    try:
        raw = json.loads(LAST_BACKUP_PATH.read_text(encoding="utf-8"))
        archive = Path(raw["archive"])
        created = float(raw["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (archive, created) if archive.exists() else None


def prune(directory: Path, server_name: str, keep: int) -> list[Path]:
    """Delete this server's archives in directory beyond the newest keep; return them."""
    ours = sorted(
        (
            path
            for path in directory.iterdir()
            if (match := NAME_PATTERN.fullmatch(path.name)) and match["server"] == server_name
        ),
        key=lambda path: path.name,
        reverse=True,
    )
    removed = ours[keep:]
    for path in removed:
        path.unlink()
    return removed
