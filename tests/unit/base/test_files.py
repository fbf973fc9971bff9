"""files: atomic writes with the mode set first, and ucf's rules for the admin's edits.

UcfState(tmp_path) runs the real ucf and ucfr with --state-dir under tmp_path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base import files
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import (
    DIST_SUFFIX,
    FileSpec,
    Outcome,
    Plan,
    UcfState,
    apply_plan,
    md5_text,
    plan_file,
    write_atomic,
)
from tests.unit.helpers import copy_root, needs_root_for_ucf

TARGET = Path("/etc/matrix-stack/example.conf")
OLD = "setting = old\n"
NEW = "setting = new\n"


def spec(text: str, mode: int = 0o640) -> FileSpec:
    return FileSpec(TARGET, text, mode, "root", "root")


def live(root: Path) -> Path:
    return root / "etc/matrix-stack/example.conf"


@pytest.fixture(scope="module")
def registered_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write OLD as ours and register it with the real ucf, once per module."""
    root = tmp_path_factory.mktemp("registered")
    write_atomic(spec(OLD), root)
    UcfState(root).register(spec(OLD))
    return root


@pytest.fixture
def registered_root(registered_template: Path, tmp_path: Path) -> Path:
    """Return this test's copy of a root where OLD was written and registered."""
    return copy_root(registered_template, tmp_path / "root")


# --- write_atomic -------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_write_atomic_creates_file_with_mode_and_no_temporary(tmp_path: Path) -> None:
    write_atomic(spec(NEW, 0o600), tmp_path)

    assert live(tmp_path).read_text() == NEW
    assert live(tmp_path).stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in live(tmp_path).parent.iterdir()) == ["example.conf"]


def test_write_atomic_sets_mode_on_a_temporary_in_the_same_directory_before_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[tuple[str, str]] = []
    states_before_content: list[tuple[int, int]] = []
    real_open = os.open
    real_fdopen = os.fdopen

    def recording_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
        descriptor = real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]
        if flags & os.O_CREAT:
            assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
            created.append((path, os.readlink(f"/proc/self/fd/{kwargs['dir_fd']}")))
        return descriptor

    def recording_fdopen(descriptor: int, *args: object, **kwargs: object) -> object:
        status = os.fstat(descriptor)
        states_before_content.append((status.st_mode & 0o777, status.st_size))
        return real_fdopen(descriptor, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fdopen", recording_fdopen)

    write_atomic(spec(NEW, 0o640), tmp_path)

    [(temporary, directory)] = created
    assert Path(directory) == live(tmp_path).parent
    assert temporary.startswith(".example.conf.")
    assert not (Path(directory) / temporary).exists()
    assert states_before_content == [(0o640, 0)]


def test_write_atomic_replaces_existing_file_by_rename(tmp_path: Path) -> None:
    write_atomic(spec(OLD, 0o644), tmp_path)
    before = live(tmp_path).stat()

    write_atomic(spec(NEW, 0o600), tmp_path)

    after = live(tmp_path).stat()
    assert live(tmp_path).read_text() == NEW
    assert after.st_ino != before.st_ino
    assert after.st_mode & 0o777 == 0o600


def test_write_atomic_with_explicit_text_writes_that_text(tmp_path: Path) -> None:
    write_atomic(spec(NEW), tmp_path, text=OLD)

    assert live(tmp_path).read_text() == OLD


def test_write_atomic_failing_midway_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    write_atomic(spec(OLD), tmp_path)

    with pytest.raises(UnicodeEncodeError):
        write_atomic(spec("not encodable: \udc80\n"), tmp_path)

    assert live(tmp_path).read_text() == OLD
    assert sorted(path.name for path in live(tmp_path).parent.iterdir()) == ["example.conf"]


# --- ucf state ----------------------------------------------------------------------------


@needs_root_for_ucf
def test_register_records_checksum_and_package_with_the_real_ucf(
    registered_template: Path,
) -> None:
    root = registered_template

    assert UcfState(root).registered_md5(TARGET) == md5_text(OLD)
    state_dir = root / "var/lib/ucf"
    assert (state_dir / "hashfile").read_text() == f"{md5_text(OLD)}  {live(root)}\n"
    assert (state_dir / "registry").read_text() == f"matrix-stack \t {live(root)}\n"


@needs_root_for_ucf
def test_register_updates_the_checksum_in_memory_and_on_disk(registered_root: Path) -> None:
    write_atomic(spec(NEW), registered_root)
    state = UcfState(registered_root)
    assert state.registered_md5(TARGET) == md5_text(OLD)

    state.register(spec(NEW))

    assert state.registered_md5(TARGET) == md5_text(NEW)
    assert UcfState(registered_root).registered_md5(TARGET) == md5_text(NEW)


def test_registered_md5_of_unknown_file_is_none(tmp_path: Path) -> None:
    assert UcfState(tmp_path).registered_md5(TARGET) is None


def test_md5_text_is_md5sum_of_the_utf8_bytes() -> None:
    # The values md5sum prints, as ucf records them in its hashfile.
    assert md5_text("hello\n") == "b1946ac92492d2347c6235b4d2611184"
    assert md5_text("é\n") == "88df14e6957d2adb8ae54d0269f546ab"


# --- plan_file and apply_plan -------------------------------------------------------------


def test_plan_file_for_missing_unregistered_file_is_created(tmp_path: Path) -> None:
    plan = plan_file(spec(NEW), tmp_path, UcfState(tmp_path))

    assert plan == Plan(spec(NEW), Outcome.CREATED, None)
    apply_plan(plan, tmp_path)
    assert live(tmp_path).read_text() == NEW


def test_plan_file_for_identical_file_is_unchanged_and_apply_does_not_rewrite(
    tmp_path: Path,
) -> None:
    write_atomic(spec(NEW), tmp_path)
    before = live(tmp_path).stat()

    plan = plan_file(spec(NEW), tmp_path, UcfState(tmp_path))
    apply_plan(plan, tmp_path)

    assert plan.outcome is Outcome.UNCHANGED
    after = live(tmp_path).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@needs_root_for_ucf
def test_plan_file_for_file_as_registered_is_updated(registered_root: Path) -> None:
    state = UcfState(registered_root)

    plan = plan_file(spec(NEW), registered_root, state)
    apply_plan(plan, registered_root)

    assert plan == Plan(spec(NEW), Outcome.UPDATED, OLD)
    assert live(registered_root).read_text() == NEW
    assert not (registered_root / f"etc/matrix-stack/example.conf{DIST_SUFFIX}").exists()


def test_plan_file_for_unregistered_differing_file_keeps_the_admins_file(
    tmp_path: Path,
) -> None:
    write_atomic(spec(OLD), tmp_path)

    assert plan_file(spec(NEW), tmp_path, UcfState(tmp_path)).outcome is Outcome.KEPT_LOCAL


@needs_root_for_ucf
def test_plan_file_for_admin_edited_file_keeps_it_and_writes_ucf_dist(
    registered_root: Path,
) -> None:
    state = UcfState(registered_root)
    live(registered_root).write_text("setting = mine\n")

    plan = plan_file(spec(NEW, 0o640), registered_root, state)
    apply_plan(plan, registered_root)

    assert plan.outcome is Outcome.KEPT_LOCAL
    assert live(registered_root).read_text() == "setting = mine\n"
    dist = registered_root / f"etc/matrix-stack/example.conf{DIST_SUFFIX}"
    assert dist.read_text() == NEW
    assert dist.stat().st_mode & 0o777 == 0o640


@needs_root_for_ucf
def test_plan_file_for_admin_deleted_file_keeps_it_deleted(registered_root: Path) -> None:
    state = UcfState(registered_root)
    live(registered_root).unlink()

    plan = plan_file(spec(NEW), registered_root, state)
    apply_plan(plan, registered_root)

    assert plan == Plan(spec(NEW), Outcome.KEPT_DELETED, None)
    assert sorted(live(registered_root).parent.iterdir()) == []


@pytest.mark.parametrize(
    ("outcome", "changes"),
    [(Outcome.CREATED, True), (Outcome.UPDATED, True), (Outcome.UNCHANGED, False),
     (Outcome.KEPT_LOCAL, False), (Outcome.KEPT_DELETED, False)],
)
def test_only_created_and_updated_change_the_live_file(outcome: Outcome, changes: bool) -> None:
    assert outcome.changes_live_file is changes


def test_host_path_puts_the_target_under_root(tmp_path: Path) -> None:
    assert files.host_path(TARGET, tmp_path) == tmp_path / "etc/matrix-stack/example.conf"
    assert files.host_path(TARGET, Path("/")) == TARGET


def test_sets_ownership_only_as_root_on_the_real_root(tmp_path: Path) -> None:
    assert files.sets_ownership(tmp_path) is False
    assert files.sets_ownership(Path("/")) is (os.geteuid() == 0)


# --- create_exclusive, and the service account that plants links ---------------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another owner needs root")
ACCOUNT_UID = 4242
WRAPPED = ("open", "mkdir", "chown", "lchown", "chmod", "fchown", "fchmod", "utime", "rename")


class ServiceAccount:
    """Play the service account (uid ACCOUNT_UID) against root's work under watched.

    Before each filesystem call root makes (and whenever act() is called), the account goes
    into every directory under watched it can reach and owns, and puts a link in place of
    each name in links (a glob: each match; moving aside what was there), as a compromised
    service could.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, watched: Path, links: dict[str, Path]):
        self.watched = watched
        self.links = links
        self.acting = False
        for name in WRAPPED:
            monkeypatch.setattr(os, name, self._before(getattr(os, name)))

    def _before(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*arguments: Any, **keywords: Any) -> Any:
            self.act()
            return call(*arguments, **keywords)
        return wrapped

    def act(self) -> None:
        if self.acting:
            return
        self.acting = True
        top = self.watched.resolve()
        try:
            for directory in self._reachable_owned(self.watched):
                if directory.resolve() != top / directory.relative_to(self.watched):
                    continue  # reached through a link it just swapped in: not its own
                for name, target in self.links.items():
                    wildcard = any(character in name for character in "*?[")
                    for entry in directory.glob(name) if wildcard else [directory / name]:
                        if entry.is_symlink() or entry.name.endswith(".moved-aside"):
                            continue
                        if entry.exists():
                            entry.rename(entry.with_name(f"{entry.name}.moved-aside"))
                        entry.symlink_to(target)
        finally:
            self.acting = False

    def _reachable_owned(self, directory: Path) -> list[Path]:
        try:
            status = directory.lstat()
        except FileNotFoundError:
            return []
        if not stat.S_ISDIR(status.st_mode):
            return []
        owned = status.st_uid == ACCOUNT_UID
        if not status.st_mode & (stat.S_IXUSR if owned else stat.S_IXOTH):
            return []
        found = [directory] if owned else []
        for entry in sorted(directory.iterdir()):
            found += self._reachable_owned(entry)
        return found


def plant_victims(tmp_path: Path) -> tuple[Path, Path]:
    """Make a file and a directory of root's that root must never change: the links' targets."""
    victim = tmp_path / "victim"
    victim.write_text("root:x:0:0\n")
    victim.chmod(0o644)
    victim_directory = tmp_path / "victim-dir"
    victim_directory.mkdir()
    victim_directory.chmod(0o755)
    return victim, victim_directory


def assert_untouched(victim: Path, victim_directory: Path) -> None:
    for path, mode in ((victim, 0o644), (victim_directory, 0o755)):
        status = path.stat()
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (0, 0, mode)
    assert victim.read_text() == "root:x:0:0\n"
    assert list(victim_directory.iterdir()) == []


@as_root
def test_create_exclusive_sets_owner_and_mode_on_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "new"
    descriptor = files.create_exclusive(path, ACCOUNT_UID, 0, 0o640)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(b"data")
    status = path.stat()
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (ACCOUNT_UID, 0, 0o640)
    assert path.read_bytes() == b"data"


@as_root
def test_create_exclusive_refuses_a_planted_link_and_leaves_its_target_alone(
    tmp_path: Path,
) -> None:
    victim, victim_directory = plant_victims(tmp_path)
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(victim_directory / "new")
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("link", "dangling"):
            with pytest.raises(FileExistsError):
                files.create_exclusive(name, ACCOUNT_UID, 0, 0o600, dir_fd=directory)
    finally:
        os.close(directory)
    assert_untouched(victim, victim_directory)


# Writing where a service account can plant links: /etc/matrix-synapse is Synapse's own.

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")


def synapse_like(tmp_path: Path) -> tuple[Path, Path]:
    """Return (a directory owned by another account, a root-only directory a link aims at)."""
    service = tmp_path / "etc/matrix-synapse"
    service.mkdir(parents=True)
    os.chown(service, NOBODY, NOBODY)
    elsewhere = tmp_path / "root-only"
    elsewhere.mkdir()
    return service, elsewhere


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(MatrixStackError) as raised:
        call()
    return str(raised.value)


@needs_root
def test_write_refuses_a_link_planted_in_a_service_directory(tmp_path: Path) -> None:
    service, elsewhere = synapse_like(tmp_path)
    (service / "conf.d").symlink_to(elsewhere)
    target = FileSpec(Path("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml"), NEW)

    message = refused(lambda: write_atomic(target, tmp_path))

    assert f"{service / 'conf.d'} is a link in a directory another account can write" in message
    assert list(elsewhere.iterdir()) == []


@needs_root
def test_remove_refuses_a_link_planted_in_a_service_directory(tmp_path: Path) -> None:
    service, elsewhere = synapse_like(tmp_path)
    (elsewhere / "w1.yaml").write_text(OLD)
    (service / "workers").symlink_to(elsewhere)

    refused(lambda: files.remove_file(service / "workers/w1.yaml"))

    assert (elsewhere / "w1.yaml").read_text() == OLD


@needs_root
def test_write_goes_into_a_real_directory_of_a_service_and_makes_missing_ones(
    tmp_path: Path,
) -> None:
    service, _ = synapse_like(tmp_path)
    target = FileSpec(Path("/etc/matrix-synapse/workers/w1.yaml"), NEW, 0o600)

    write_atomic(target, tmp_path)

    assert (service / "workers/w1.yaml").read_text() == NEW
    made = (service / "workers").stat()
    assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (0, 0o755)
    assert files.remove_file(service / "workers/w1.yaml")
    assert not files.remove_file(service / "workers/w1.yaml")


def test_a_link_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (tmp_path / "real").mkdir()
    (shared / "conf.d").symlink_to(tmp_path / "real")

    refused(lambda: files.replace_file(shared / "conf.d/x", b"x", 0o644, None))

    assert list((tmp_path / "real").iterdir()) == []


@needs_root
def test_in_a_sticky_directory_only_links_of_root_are_followed(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (tmp_path / "real").mkdir()
    (sticky / "ours").symlink_to(tmp_path / "real")
    (sticky / "theirs").symlink_to(tmp_path / "real")
    os.lchown(sticky / "theirs", NOBODY, NOBODY)

    files.replace_file(sticky / "ours/x", b"x", 0o644, None)
    refused(lambda: files.replace_file(sticky / "theirs/y", b"y", 0o644, None))

    assert sorted(path.name for path in (tmp_path / "real").iterdir()) == ["x"]


def test_links_in_directories_of_root_alone_are_followed_relative_and_absolute(
    tmp_path: Path,
) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")  # a merged /usr
    (tmp_path / "usr/lib/up").symlink_to("../../other")
    (tmp_path / "other").mkdir()
    (tmp_path / "absolute").symlink_to(tmp_path / "usr")

    files.replace_file(tmp_path / "lib/a", b"a", 0o644, None)
    files.replace_file(tmp_path / "lib/up/b", b"b", 0o644, None)
    files.replace_file(tmp_path / "absolute/lib/c", b"c", 0o644, None)

    assert sorted(path.name for path in (tmp_path / "usr/lib").iterdir()) == ["a", "c", "up"]
    assert (tmp_path / "other/b").read_bytes() == b"b"


def test_a_loop_of_links_and_a_file_on_the_way_are_errors(tmp_path: Path) -> None:
    (tmp_path / "one").symlink_to("two")
    (tmp_path / "two").symlink_to("one")
    (tmp_path / "plain").write_text("")

    with pytest.raises(OSError, match="symbolic links"):
        files.open_directory(tmp_path / "one", create=True)
    with pytest.raises(NotADirectoryError):
        files.open_directory(tmp_path / "plain/below", create=True)
