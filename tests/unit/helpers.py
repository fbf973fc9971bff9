"""Helpers shared by the unit tests: settings, a recording Synapse check, root copies."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.apply import Report
from matrix_stack.files import UCF_STATE_PATH, host_path
from matrix_stack.settings import Settings, from_mapping

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


def copy_root(source: Path, destination: Path) -> Path:
    """Copy a root and point ucf's records (absolute paths) at the copy."""
    shutil.copytree(source, destination, symlinks=True)
    for record in host_path(UCF_STATE_PATH, destination).rglob("*"):
        if record.is_file():
            text = record.read_text(encoding="utf-8")
            record.write_text(text.replace(str(source), str(destination)), encoding="utf-8")
    return destination
