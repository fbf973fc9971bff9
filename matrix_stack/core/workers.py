"""Synapse's worker layout: which processes run, on which loopback port, serving what.

Pure: the answer to matrix-stack/workers (off, auto, or counts per kind) and the number of
cores give the workers; render.py and the templates turn them into files. The kinds follow
Synapse's docs/workers.md: generic workers for sync, client requests and federation reads,
federation senders (federation_sender_instances), media repositories
(media_instance_running_background_jobs) and one background-task worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from matrix_stack.base.errors import SettingsError

OFF = "off"
AUTO = "auto"
MAX_PER_KIND = 16
# The main process's replication listener (instance_map main), on loopback only.
REPLICATION_PORT = 9093
WORKERS_DIR = "/etc/matrix-synapse/workers"
WORKER_UNIT = "matrix-synapse-worker@{name}"


@dataclass(frozen=True)
class Kind:
    """One kind of worker: its Synapse app, listener resources and first loopback port."""

    name: str
    app: str
    resources: tuple[str, ...]
    base_port: int
    at_most: int = MAX_PER_KIND


# In the order a layout is written. Every worker gets an HTTP listener on 127.0.0.1 (those
# serving no requests only Synapse's /health, for doctor); ports are per kind, so adding a
# worker of one kind never moves another's.
KINDS: tuple[Kind, ...] = (
    Kind("sync", "synapse.app.generic_worker", ("client",), 8110),
    Kind("client", "synapse.app.generic_worker", ("client",), 8130),
    Kind("federation-reader", "synapse.app.generic_worker", ("federation",), 8150),
    Kind("federation-sender", "synapse.app.generic_worker", ("health",), 8170),
    Kind("media", "synapse.app.media_repository", ("media",), 8190),
    Kind("background", "synapse.app.generic_worker", ("health",), 8210, at_most=1),
)
KIND_BY_NAME = {kind.name: kind for kind in KINDS}
_LAYOUT_ITEM = re.compile(r"([a-z-]+)\s*[=:]\s*(\d+)")


@dataclass(frozen=True)
class Worker:
    """One worker process: matrix-synapse-worker@NAME, config in WORKERS_DIR/NAME.yaml."""

    name: str
    kind: Kind
    port: int

    @property
    def unit(self) -> str:
        return WORKER_UNIT.format(name=self.name)

    @property
    def config_path(self) -> str:
        return f"{WORKERS_DIR}/{self.name}.yaml"


def check_workers(question: str, value: object) -> str:
    """Return 'off', 'auto' or a layout written canonically (kind=count, KINDS order)."""
    # YAML 1.1 reads an unquoted 'workers: off' in a hand-edited stack.yaml as false.
    text = "off" if value is False else str(value if value is not None else "").strip().lower()
    if text in ("", OFF):
        return OFF
    if text == AUTO:
        return AUTO
    counts = parse_layout(question, text)
    return format_layout(counts)


def parse_layout(question: str, text: str) -> dict[str, int]:
    """Return the count per kind of a layout such as 'sync=2, media=1', or raise SettingsError."""
    counts: dict[str, int] = {}
    for item in filter(None, re.split(r"[\s,]+", text)):
        match = _LAYOUT_ITEM.fullmatch(item)
        if match is None:
            raise SettingsError(question, text, "must be off, auto, or counts per kind such "
                                "as sync=2,client=1,federation-reader=1,federation-sender=1,"
                                "media=1")
        name, count = match.group(1), int(match.group(2))
        kind = KIND_BY_NAME.get(name)
        if kind is None:
            raise SettingsError(question, text, f"names an unknown kind {name} (kinds: "
                                f"{', '.join(KIND_BY_NAME)})")
        if name in counts:
            raise SettingsError(question, text, f"gives {name} twice")
        if count > kind.at_most:
            raise SettingsError(question, text, f"asks for {count} {name} workers; at most "
                                f"{kind.at_most}")
        counts[name] = count
    if not any(counts.values()):
        raise SettingsError(question, text, "has no worker: answer off instead")
    return counts


def format_layout(counts: dict[str, int]) -> str:
    return ",".join(f"{kind.name}={counts[kind.name]}" for kind in KINDS
                    if counts.get(kind.name))


def auto_counts(cores: int) -> dict[str, int]:
    """Return the layout 'auto' means on a machine with this many cores.

    One of each kind up to four cores (main plus five workers share them; each process is
    single-threaded); beyond that, sync and client workers grow with the cores, the others
    slower. A background worker only once there are cores to spare for it.
    """
    cores = max(1, cores)
    return {
        "sync": min(MAX_PER_KIND, max(1, cores // 4)),
        "client": min(MAX_PER_KIND, max(1, cores // 4)),
        "federation-reader": min(MAX_PER_KIND, max(1, cores // 8)),
        "federation-sender": min(MAX_PER_KIND, max(1, cores // 16)),
        "media": 1,
        "background": 1 if cores >= 8 else 0,
    }


def layout_counts(answer: str, cores: int) -> dict[str, int]:
    """Return the count per kind the answer means (off: none)."""
    if answer == OFF:
        return {}
    if answer == AUTO:
        return auto_counts(cores)
    return parse_layout("workers", answer)


def plan_workers(answer: str, cores: int) -> tuple[Worker, ...]:
    """Return every worker of the layout, named KIND1, KIND2... (underscores, as Synapse's
    docs name them), in KINDS order."""
    counts = layout_counts(answer, cores)
    workers = []
    for kind in KINDS:
        for index in range(counts.get(kind.name, 0)):
            name = f"{kind.name.replace('-', '_')}{index + 1}"
            workers.append(Worker(name, kind, kind.base_port + index))
    return tuple(workers)


def of_kind(workers: tuple[Worker, ...], kind: str) -> tuple[Worker, ...]:
    return tuple(worker for worker in workers if worker.kind.name == kind)


# Synapse's replication bus: a Valkey (or Redis) instance of our own, on loopback with a
# password, through the package's templated unit (valkey-server@.service reads
# /etc/valkey/valkey-NAME.conf), so that the package's default instance stays untouched.
KEY_VALUE_PORT = 6380
KEY_VALUE_INSTANCE = "matrix-stack"


@dataclass(frozen=True)
class KeyValueServer:
    """Valkey or Redis as Debian packages them: binary, instance unit, config, account."""

    name: str
    package: str
    binary: str
    account: str

    @property
    def unit(self) -> str:
        return f"{self.package}@{KEY_VALUE_INSTANCE}"

    @property
    def config_path(self) -> str:
        return f"/etc/{self.name}/{self.name}-{KEY_VALUE_INSTANCE}.conf"

    @property
    def run_dir(self) -> str:
        return f"/run/{self.name}-{KEY_VALUE_INSTANCE}"


KEY_VALUE_SERVERS = (
    KeyValueServer("valkey", "valkey-server", "/usr/bin/valkey-server", "valkey"),
    KeyValueServer("redis", "redis-server", "/usr/bin/redis-server", "redis"),
)
KEY_VALUE_SERVER_BY_NAME = {server.name: server for server in KEY_VALUE_SERVERS}
