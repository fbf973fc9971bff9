"""matrix-stack-admin workers status, and doctor's worker checks: every Synapse process of the
layout with its unit state, /health on its loopback port, its replication connection to
Valkey/Redis and its load (CPU time and memory, from systemd's accounting)."""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from matrix_stack.core.settings import Settings
    from matrix_stack.core.workers import Worker

    class _ProcessFields(NamedTuple):
        name: str
        unit: str
        port: int
        active: str
        answering: bool
        replication: bool | None  # None: the main process without workers (no replication)
        cpu_seconds: float
        memory_mib: float
else:  # dataclasses and typing.NamedTuple would cost the command line milliseconds
    from collections import namedtuple

    _ProcessFields = namedtuple("Process", ["name", "unit", "port", "active", "answering",
                                            "replication", "cpu_seconds", "memory_mib"])


def add_commands(commands: Any) -> None:
    """Register the workers command on the top-level subparsers."""
    workers = commands.add_parser(
        "workers", help="Synapse's worker processes: layout, state and load",
        description="Show the layout of Synapse's worker processes (matrix-stack/workers) and, "
        "for the main process and each worker: its systemd unit's state, whether it answers "
        "/health on its loopback port, whether it is connected to Valkey/Redis for "
        "replication, and its load (CPU time used since it started, memory).",
    )
    actions = workers.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="print the layout and each process's state",
                                description="Print the layout, then one line per process.")
    status.add_argument("--json", action="store_true", help="print a JSON list of processes")
    status.set_defaults(handler=run_status)


class Process(_ProcessFields):
    """One Synapse process as systemd and its own /health see it."""

    __slots__ = ()

    @property
    def ok(self) -> bool:
        return self.active == "active" and self.answering and self.replication is not False

    def line(self) -> str:
        replication = {None: "", True: ", replication connected",
                       False: ", replication NOT connected"}[self.replication]
        health = "answering" if self.answering else "NOT answering"
        return (f"{self.name:<20} {self.unit}: {self.active}, {health} on 127.0.0.1:{self.port}"
                f"{replication}; cpu {self.cpu_seconds:.1f} s, memory {self.memory_mib:.0f} MiB")


def _run(argv: list[str]) -> str:
    from matrix_stack.base.run import run

    return str(run(argv, check=False, timeout=30).stdout)


def answers_health(port: int) -> bool:
    """Return whether the process on port answers /health (never through a proxy)."""
    from matrix_stack.base.loopback_http import exchange

    try:
        return exchange(f"http://127.0.0.1:{port}", "GET", "/health", {}, None, 5).status == 200
    except OSError:
        return False


def replication_pids() -> set[str]:
    """Return the PIDs holding a connection to the Valkey/Redis instance of the workers."""
    from matrix_stack.core.workers import KEY_VALUE_PORT

    table = _run(["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{KEY_VALUE_PORT}"])
    return {part.split("pid=")[1].split(",")[0] for part in table.split() if "pid=" in part}


def unit_numbers(unit: str) -> dict[str, str]:
    shown = _run(["systemctl", "show", "-p", "ActiveState", "-p", "MainPID", "-p",
                  "CPUUsageNSec", "-p", "MemoryCurrent", f"{unit}.service"])
    return dict(line.partition("=")[::2] for line in shown.splitlines() if "=" in line)


def _number(text: str | None) -> float:
    return float(text) if text and text.isdigit() else 0.0


def processes(settings: Settings, workers: tuple[Worker, ...]) -> list[Process]:
    """Return the main process and every worker, as they run now."""
    connected = replication_pids() if workers else set()
    rows = [("main", "matrix-synapse", 8008)]
    rows += [(worker.name, worker.unit, worker.port) for worker in workers]
    found = []
    for name, unit, port in rows:
        numbers = unit_numbers(unit)
        found.append(Process(
            name, unit, port, numbers.get("ActiveState", "unknown"), answers_health(port),
            (numbers.get("MainPID", "0") in connected) if workers else None,
            _number(numbers.get("CPUUsageNSec")) / 1e9,
            _number(numbers.get("MemoryCurrent")) / 2**20,
        ))
    return found


def layout_line(settings: Settings, cores: int) -> str:
    from matrix_stack.core.workers import OFF, format_layout, layout_counts

    if settings.workers == OFF:
        return "workers: off (one Synapse process)"
    counts = format_layout(layout_counts(settings.workers, cores))
    return f"workers: {settings.workers}" + (f" = {counts}" if counts != settings.workers else "")


def current_workers(settings: Settings) -> tuple[tuple[Worker, ...], int]:
    import os

    from matrix_stack.core.workers import plan_workers

    cores = os.cpu_count() or 1
    return plan_workers(settings.workers, cores), cores


def run_status(arguments: argparse.Namespace) -> int:
    import json

    from matrix_stack.core.stack import current_settings

    settings = current_settings()
    workers, cores = current_workers(settings)
    found = processes(settings, workers)
    if arguments.json:
        json.dump([{**process._asdict(), "ok": process.ok} for process in found], sys.stdout,
                  indent=2)
        print()
    else:
        print(f"{layout_line(settings, cores)} ({cores} cores)")
        for process in found:
            print(process.line())
    return 0 if all(process.ok for process in found) else 1
