"""apply with matrix-stack/workers, into a temporary root: the worker and Valkey files, which
units restart in which order, and switching workers off again (files removed, units stopped),
as the package's removal does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import UcfState
from matrix_stack.core.apply import apply
from matrix_stack.core.stack import current_settings, write_stack
from matrix_stack.core.system import in_order
from matrix_stack.hooks import leave_monolith
from tests.unit.helpers import (
    BASE_STACK,
    FakeSystem,
    SynapseCheck,
    make_settings,
    needs_root_for_ucf,
)

LAYOUT = "sync=2,media=1"
WORKER_FILES = ["etc/matrix-synapse/workers/media1.yaml", "etc/matrix-synapse/workers/sync1.yaml",
                "etc/matrix-synapse/workers/sync2.yaml"]
VALKEY_CONF = "etc/valkey/valkey-matrix-stack.conf"
WORKERS_ON = ["valkey-server@matrix-stack", "matrix-synapse-worker@media1",
              "matrix-synapse-worker@sync1", "matrix-synapse-worker@sync2"]


def apply_workers(root: Path, workers: str, system: FakeSystem) -> list[str]:
    settings = make_settings(root, database="postgresql", workers=workers)
    return apply(settings, root=root, system=system, validate_synapse=SynapseCheck(),
                 database_ready=True).lines()


def worker_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root))
                  for path in (root / "etc/matrix-synapse/workers").glob("*.yaml"))


def test_in_order_restarts_valkey_then_main_then_workers_then_apache() -> None:
    assert in_order(["apache2", "matrix-synapse-worker@sync1", "coturn", "matrix-synapse",
                     "valkey-server@matrix-stack", "unknown", "matrix-synapse-worker@"]) == [
        "valkey-server@matrix-stack", "matrix-synapse", "matrix-synapse-worker@sync1",
        "coturn", "apache2"]


@needs_root_for_ucf
def test_apply_with_workers_writes_their_files_and_restarts_in_order(tmp_path: Path) -> None:
    system = FakeSystem()

    lines = apply_workers(tmp_path, LAYOUT, system)

    assert worker_files(tmp_path) == WORKER_FILES
    assert (tmp_path / VALKEY_CONF).stat().st_mode & 0o777 == 0o640
    for secret in ("worker_replication_secret", "redis_password"):
        assert (tmp_path / "etc/matrix-stack/secrets" / secret).stat().st_mode & 0o777 == 0o600
    assert system.calls[0] == ("check_workers", LAYOUT)
    restart = next(call for call in system.calls if call[0] == "restart")
    assert restart[1:] == ("valkey-server@matrix-stack", "matrix-synapse",
                           "matrix-synapse-worker@media1", "matrix-synapse-worker@sync1",
                           "matrix-synapse-worker@sync2", "coturn", "apache2")
    assert ("stop_workers", *WORKERS_ON) in system.calls
    assert ("start_workers", *WORKERS_ON) in system.calls
    assert "enable matrix-synapse-worker@sync2" in lines


@needs_root_for_ucf
def test_apply_changing_the_layout_restarts_only_the_workers_whose_file_changed(
    tmp_path: Path,
) -> None:
    apply_workers(tmp_path, LAYOUT, FakeSystem())
    system = FakeSystem()

    lines = apply_workers(tmp_path, "sync=1,media=1", system)

    assert worker_files(tmp_path) == [name for name in WORKER_FILES if "sync2" not in name]
    assert "removed /etc/matrix-synapse/workers/sync2.yaml" in lines
    restart = next(call for call in system.calls if call[0] == "restart")
    # Only Apache's balancer changed: sync1, media1 and the main process keep running.
    assert restart[1:] == ("apache2",)
    assert ("stop_workers", "valkey-server@matrix-stack", "matrix-synapse-worker@media1",
            "matrix-synapse-worker@sync1") in system.calls
    assert UcfState(tmp_path).registered_md5(
        Path("/etc/matrix-synapse/workers/sync2.yaml")) is None


@needs_root_for_ucf
def test_apply_switching_workers_off_removes_their_files_and_stops_their_units(
    tmp_path: Path,
) -> None:
    apply_workers(tmp_path, LAYOUT, FakeSystem())
    system = FakeSystem(worker_units_seen=True)

    lines = apply_workers(tmp_path, "off", system)

    assert worker_files(tmp_path) == []
    assert not (tmp_path / VALKEY_CONF).exists()
    assert f"removed /{VALKEY_CONF}" in lines
    restart = next(call for call in system.calls if call[0] == "restart")
    assert restart[1:] == ("matrix-synapse", "apache2")
    assert ("stop_workers",) in system.calls
    assert ("check_workers", "off") not in system.calls
    # Switching on again recreates every file (ucf forgot them: not "deleted by the admin").
    apply_workers(tmp_path, LAYOUT, FakeSystem())
    assert worker_files(tmp_path) == WORKER_FILES


@needs_root_for_ucf
def test_apply_leaves_an_admins_own_file_in_the_workers_directory(tmp_path: Path) -> None:
    own = tmp_path / "etc/matrix-synapse/workers/mine.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("worker_app: synapse.app.generic_worker\n")
    apply_workers(tmp_path, LAYOUT, FakeSystem())

    apply_workers(tmp_path, "off", FakeSystem())

    assert worker_files(tmp_path) == ["etc/matrix-synapse/workers/mine.yaml"]


def test_apply_refused_workers_writes_nothing(tmp_path: Path) -> None:
    refusal = MatrixStackError("matrix-stack/workers: ... apt install valkey-server")
    system = FakeSystem(refusals={"check_workers": refusal})

    with pytest.raises(MatrixStackError, match="apt install valkey-server"):
        apply_workers(tmp_path, LAYOUT, system)

    assert not (tmp_path / "etc/matrix-synapse").exists()
    assert system.calls == [("check_workers", LAYOUT)]


@needs_root_for_ucf
def test_removing_the_package_with_workers_leaves_synapse_one_process(tmp_path: Path) -> None:
    write_stack({**BASE_STACK, "database": "postgresql", "workers": LAYOUT}, tmp_path)
    apply_workers(tmp_path, LAYOUT, FakeSystem())
    system = FakeSystem(worker_units_seen=True)

    lines = leave_monolith(tmp_path, system)

    config = yaml.safe_load((tmp_path / "etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
                            .read_text(encoding="utf-8"))
    assert not {"enable_media_repo", "send_federation", "instance_map", "redis",
                "media_instance_running_background_jobs"} & set(config)
    assert worker_files(tmp_path) == []
    restart = next(call for call in system.calls if call[0] == "restart")
    assert restart[1:] == ("matrix-synapse", "apache2")
    assert ("stop_workers",) in system.calls
    assert lines[0].startswith(f"workers: Synapse runs as one process again (stack.yaml keeps "
                               f"workers: {LAYOUT}")
    # The admin's answer stays for a later install.
    assert current_settings(tmp_path).workers == LAYOUT


def test_removing_the_package_without_workers_changes_nothing(tmp_path: Path) -> None:
    write_stack({**BASE_STACK}, tmp_path)
    system = FakeSystem()

    assert leave_monolith(tmp_path, system) == []
    assert leave_monolith(tmp_path / "never-configured", system) == []
    assert system.calls == []
