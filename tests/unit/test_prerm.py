"""The prerm's clean-up of the workers' units (POSIX sh), run with sh on the function it
defines, with systemctl and deb-systemd-invoke replaced by programs that record their argv."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

PRERM = Path(__file__).resolve().parents[2] / "debian" / "matrix-stack.prerm"
RECORDER = '#!/bin/sh\necho "${0##*/} $*" >> "$CALLS"\n'


def leave_worker_units(systemd: Path, tmp_path: Path) -> list[str]:
    """Run the prerm's leave_worker_units on systemd (a fake /etc/systemd/system); return
    the systemctl and deb-systemd-invoke commands it ran (none may reach the host)."""
    text = PRERM.read_text(encoding="utf-8")
    found = re.search(r"^leave_worker_units\(\) {\n.*?^}\n", text, re.M | re.S)
    assert found, "leave_worker_units() not found in the prerm"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("systemctl", "deb-systemd-invoke"):
        (bin_dir / program).write_text(RECORDER)
        (bin_dir / program).chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)}
    subprocess.run(["sh", "-ec", found.group(0) + 'leave_worker_units "$1"\n', "sh",
                    str(systemd)], env=environment, check=True)
    return calls.read_text().splitlines()


def enable(systemd: Path, wants: str, unit: str) -> None:
    """Make the link systemctl enable makes (to a unit file that may be gone)."""
    (systemd / wants).mkdir(parents=True, exist_ok=True)
    (systemd / wants / unit).symlink_to(f"/usr/lib/systemd/system/{unit}")


def links(systemd: Path) -> list[str]:
    """Return the enablement links left under systemd, relative to it."""
    return sorted(str(path.relative_to(systemd)) for path in systemd.rglob("*")
                  if path.is_symlink())


def test_after_a_failed_remove_hook_every_worker_unit_is_stopped_and_disabled(
    tmp_path: Path,
) -> None:
    systemd = tmp_path / "systemd"
    for name in ("client1", "sync1"):
        enable(systemd, "matrix-synapse.target.wants", f"matrix-synapse-worker@{name}.service")
    enable(systemd, "multi-user.target.wants", "valkey-server@matrix-stack.service")
    enable(systemd, "multi-user.target.wants", "matrix-synapse.target")
    enable(systemd, "multi-user.target.wants", "valkey-server.service")  # not ours: kept

    assert leave_worker_units(systemd, tmp_path) == [
        "deb-systemd-invoke stop matrix-synapse-worker@client1.service",
        "deb-systemd-invoke stop matrix-synapse-worker@sync1.service",
        "deb-systemd-invoke stop valkey-server@matrix-stack.service",
        "deb-systemd-invoke stop redis-server@matrix-stack.service",
    ]
    assert links(systemd) == ["multi-user.target.wants/valkey-server.service"]


def test_with_nothing_enabled_only_the_key_value_instances_are_stopped(tmp_path: Path) -> None:
    systemd = tmp_path / "systemd"
    systemd.mkdir()

    assert leave_worker_units(systemd, tmp_path) == [
        "deb-systemd-invoke stop valkey-server@matrix-stack.service",
        "deb-systemd-invoke stop redis-server@matrix-stack.service",
    ]
