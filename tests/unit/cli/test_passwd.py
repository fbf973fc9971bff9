"""passwd: offline only when no Synapse process runs, workers included."""

from __future__ import annotations

import subprocess

import pytest

from matrix_stack.base import run as run_module
from matrix_stack.cli import passwd
from matrix_stack.core import services

MAIN = "matrix-synapse.service"
WORKER = "matrix-synapse-worker@client1.service"


@pytest.mark.parametrize(
    ("workers", "states", "state"),
    [
        ([], "active\n", (True, True, "matrix-synapse")),
        ([], "inactive\n", (False, False, "matrix-synapse")),
        (["matrix-synapse-worker@client1"], "active\nactive\n",
         (True, True, "matrix-synapse.target")),
        # The main process stopped alone: a worker still runs, with its caches.
        (["matrix-synapse-worker@client1"], "inactive\nactive\n",
         (False, True, "matrix-synapse.target")),
        (["matrix-synapse-worker@client1"], "inactive\nfailed\n",
         (False, False, "matrix-synapse.target")),
    ],
)
def test_synapse_runs_while_any_of_its_processes_runs(
    monkeypatch: pytest.MonkeyPatch, workers: list[str], states: str,
    state: tuple[bool, bool, str],
) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_options: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, states, "")

    monkeypatch.setattr(services, "worker_units", lambda: workers)
    monkeypatch.setattr(run_module, "run", fake_run)

    assert passwd._synapse_state() == state
    assert calls == [["systemctl", "is-active", MAIN, *([WORKER] if workers else [])]]
