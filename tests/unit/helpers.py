"""Helpers shared by the unit tests: settings, a recording Synapse check, root copies."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base.files import host_path
from matrix_stack.base.paths import UCF_STATE_PATH
from matrix_stack.core.apply import Report
from matrix_stack.core.settings import Settings, from_mapping

# ucf run by anyone but root switches to "no action mode": it records nothing, exits 0.
needs_root_for_ucf = pytest.mark.skipif(
    os.geteuid() != 0, reason="ucf records checksums only when run as root"
)

SERVER_NAME = "matrix.example.org"
# Fixed TURN addresses: no default-route detection, so results do not depend on the host.
LISTENING_IP = "203.0.113.10"
BASE_STACK: Mapping[str, Any] = {
    "server_name": SERVER_NAME,
    "turn_listening_ip": LISTENING_IP,
    "turn_external_ip": LISTENING_IP,
}


def make_settings(root: Path = Path("/"), /, **overrides: Any) -> Settings:
    """Return Settings from BASE_STACK with overrides, validated as stack.yaml would be."""
    return from_mapping({**BASE_STACK, **overrides}, root)


@dataclass
class SynapseCheck:
    """Stands in for Synapse's config check in apply(): records calls, refuses when told."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    refusal: Exception | None = None

    def __call__(self, candidate: str, candidate_name: str) -> None:
        self.calls.append((candidate, candidate_name))
        if self.refusal is not None:
            raise self.refusal


@dataclass
class FakeSystem:
    """Stands in for the running system in apply(): records each call in order.

    failing[n]: the units whose start fails at the n-th restart call; interrupt: the name of
    the call that raises KeyboardInterrupt (the first time); refusals: call name -> error.
    """

    calls: list[tuple[str, ...]] = field(default_factory=list)
    failing: list[set[str]] = field(default_factory=list)
    interrupt: str = ""
    refusals: dict[str, Exception] = field(default_factory=dict)
    maintainer_script: bool = False
    newly_enabled: tuple[str, ...] = ()
    worker_units_seen: bool = False

    def _call(self, name: str, *arguments: str) -> None:
        self.calls.append((name, *arguments))
        if self.interrupt == name:
            self.interrupt = ""
            raise KeyboardInterrupt
        if name in self.refusals:
            raise self.refusals[name]

    def validate_synapse(self, candidate: str, candidate_name: str) -> None:
        self._call("validate_synapse", candidate_name)

    def prepare_database(self, settings: Settings, root: Path) -> list[str]:
        # Recorded only when refused (so that tests of files and units see no extra call).
        if "prepare_database" in self.refusals:
            self._call("prepare_database")
        return []

    def database_password_check(self) -> None:
        return None

    def disable_site(self, name: str, root: Path) -> None:
        self._call("disable_site", name)

    def probe_sqlite(self, path: Path, probe: str, *arguments: str) -> str | None:
        return None

    def enable_apache(self, settings: Settings, root: Path) -> tuple[str, ...]:
        self._call("enable_apache")
        return self.newly_enabled

    def validate_apache(self) -> None:
        self._call("validate_apache")

    def disable_apache_site(self) -> None:
        self._call("disable_apache_site")

    def restart(self, units: Sequence[str]) -> tuple[list[str], list[str]]:
        self._call("restart", *units)
        failing = self.failing.pop(0) if self.failing else set()
        failed = [unit for unit in units if unit in failing]
        return [f"restart {unit}" for unit in units if unit not in failed], failed

    def set_turn_service(self, enabled: bool, root: Path) -> list[str]:
        self._call("set_turn_service", str(enabled))
        return []

    def set_backup_timer(self, daily: bool) -> list[str]:
        self._call("set_backup_timer", str(daily))
        return []

    def in_maintainer_script(self) -> bool:
        return self.maintainer_script

    def check_workers(self, settings: Settings) -> None:
        self._call("check_workers", settings.workers)

    def stop_workers(self, keep: Sequence[str]) -> list[str]:
        # Recorded only once workers are in play (so that tests without them see no call).
        self.worker_units_seen = self.worker_units_seen or bool(keep)
        if self.worker_units_seen:
            self._call("stop_workers", *keep)
        return []

    def start_workers(self, units: Sequence[str]) -> list[str]:
        if self.worker_units_seen:
            self._call("start_workers", *units)
        return [f"enable {unit}" for unit in units]


@dataclass(frozen=True)
class AppliedRoot:
    """A root filled by one apply of make_settings(), with what that apply reported."""

    root: Path
    report: Report
    synapse_calls: tuple[tuple[str, str], ...]


FileState = tuple[bytes | str, int, int]


def snapshot(root: Path) -> dict[str, FileState]:
    """Return every file under root by relative path: content (symlinks: target), inode, mtime."""
    result: dict[str, FileState] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            result[name] = (str(path.readlink()), 0, 0)
        elif path.is_file():
            status = path.stat()
            result[name] = (path.read_bytes(), status.st_ino, status.st_mtime_ns)
    return result


def files_and_modes(root: Path) -> dict[str, tuple[bytes | str, int]]:
    """Return every file under root by relative path: content (symlinks: target) and mode."""
    result: dict[str, tuple[bytes | str, int]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            result[name] = (str(path.readlink()), 0)
        elif path.is_file():
            result[name] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    return result


def copy_root(source: Path, destination: Path) -> Path:
    """Copy a root and point ucf's records (absolute paths) at the copy."""
    shutil.copytree(source, destination, symlinks=True)
    for record in host_path(UCF_STATE_PATH, destination).rglob("*"):
        if record.is_file():
            text = record.read_text(encoding="utf-8")
            record.write_text(text.replace(str(source), str(destination)), encoding="utf-8")
    return destination


class Answers:
    """A debconf database in a dict, remembering what was set."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)

    def get(self, question: str) -> str:
        return self.values.get(question, "")

    def set(self, question: str, value: str) -> None:
        self.values[question] = value
