"""make bench (workers): one Synapse process against Synapse's workers, PostgreSQL both.

One booted Debian 13 + matrix-synapse-py3 stack on PostgreSQL. The same users and rooms are
loaded twice, first with workers off, then with matrix-stack/workers: auto (switched by
stack.yaml and apply, as an admin would): CLIENTS logged-in clients over HTTPS through Apache,
each sending messages into one of ROOMS shared rooms as fast as its answers come back, and
long-polling /sync. Printed: messages/s accepted, deliveries/s (a message reaching a member's
/sync), delivery latency p50/p99 (send started -> seen in another member's /sync), and the
RSS and CPU seconds of each Synapse process. Never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.bench import machine
from tests.system import stack
from tests.system.testbed import Container, cleanup_stale, current_target, ensure_base_tarball

SERVER = stack.SERVER
CLIENTS = 16
ROOMS = 2
SECONDS = 20
# Bench only, never in the package: no rate limit on the bench's own users.
BENCH_ONLY = (
    "rc_message: {per_second: 10000, burst_count: 10000}\n"
    "rc_login:\n"
    "  address: {per_second: 1000, burst_count: 1000}\n"
    "  account: {per_second: 1000, burst_count: 1000}\n"
    "rc_joins: {local: {per_second: 1000, burst_count: 1000}}\n"
    "bcrypt_rounds: 4\n"
)
SYNC_FILTER = json.dumps({"presence": {"not_types": ["*"]},
                          "account_data": {"not_types": ["*"]},
                          "room": {"timeline": {"limit": 200},
                                   "ephemeral": {"not_types": ["*"]}}})


@dataclass
class Load:
    """What one run measured."""

    sent: int = 0
    deliveries: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


def tls_context(container: Container) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(container.path(stack.SELF_SIGNED_CERT)))


async def request(session: aiohttp.ClientSession, method: str, path: str, token: str = "",
                  body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, f"https://{SERVER}{path}", json=body,
                               headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
        return await response.json()


async def prepare(container: Container) -> tuple[list[str], list[str], list[str]]:
    """Create CLIENTS users, log each in, make ROOMS rooms; return (tokens, user ids, rooms)."""
    for index in range(CLIENTS):
        container.run(["matrix-stack-admin", "user", "add", f"load{index:02d}",
                       "--password-file", "-"], input=f"load-password-{index}")
    connector = aiohttp.TCPConnector(ssl=tls_context(container))
    async with aiohttp.ClientSession(connector=connector) as session:
        tokens, users = [], []
        for index in range(CLIENTS):
            answer = await request(session, "POST", "/_matrix/client/v3/login", body={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": f"load{index:02d}"},
                "password": f"load-password-{index}"})
            tokens.append(answer["access_token"])
            users.append(answer["user_id"])
        rooms = []
        for number in range(ROOMS):
            answer = await request(session, "POST", "/_matrix/client/v3/createRoom", tokens[number],
                                   {"name": f"load {number}", "preset": "public_chat"})
            rooms.append(answer["room_id"])
        for index, token in enumerate(tokens):
            room = rooms[index % ROOMS]
            if index >= ROOMS:
                await request(session, "POST",
                              f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", token, {})
    return tokens, users, rooms


async def run_load(container: Container, tokens: list[str], rooms: list[str]) -> Load:
    """Every client sends as fast as it is answered and long-polls /sync for SECONDS."""
    load = Load()
    connector = aiohttp.TCPConnector(ssl=tls_context(container), limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        since = []
        for token in tokens:
            answer = await request(session, "GET", "/_matrix/client/v3/sync?timeout=0&filter="
                                   + urllib.parse.quote(SYNC_FILTER), token)
            since.append(answer["next_batch"])
        started = time.monotonic()
        stop = started + SECONDS

        async def sender(index: int) -> None:
            room = urllib.parse.quote(rooms[index % ROOMS])
            count = 0
            while time.monotonic() < stop:
                count += 1
                body = {"msgtype": "m.text", "body": f"{index} {count} {time.monotonic()!r}"}
                try:
                    await request(session, "PUT", f"/_matrix/client/v3/rooms/{room}/send/"
                                  f"m.room.message/b{index}-{count}", tokens[index], body)
                    load.sent += 1
                except (TimeoutError, RuntimeError, aiohttp.ClientError):
                    load.errors += 1

        async def syncer(index: int) -> None:
            position = since[index]
            # After the senders stop, keep reading until what was sent has arrived.
            while time.monotonic() < stop + 10:
                try:
                    answer = await request(
                        session, "GET", f"/_matrix/client/v3/sync?timeout=5000&since="
                        f"{urllib.parse.quote(position)}&filter="
                        f"{urllib.parse.quote(SYNC_FILTER)}", tokens[index])
                except (TimeoutError, RuntimeError, aiohttp.ClientError):
                    load.errors += 1
                    continue
                seen = time.monotonic()
                position = answer["next_batch"]
                for joined in answer.get("rooms", {}).get("join", {}).values():
                    for event in joined.get("timeline", {}).get("events", []):
                        text = event.get("content", {}).get("body", "")
                        parts = text.split(" ")
                        if event["type"] != "m.room.message" or len(parts) != 3 \
                                or parts[0] == str(index):
                            continue
                        load.deliveries += 1
                        load.latencies.append((seen - float(parts[2])) * 1000)
                if time.monotonic() > stop and not answer.get("rooms"):
                    return

        await asyncio.gather(*(sender(i) for i in range(len(tokens))),
                             *(syncer(i) for i in range(len(tokens))))
    return load


def synapse_processes(container: Container) -> dict[str, tuple[int, float]]:
    """Return each Synapse process's name -> (RSS in KiB, CPU seconds so far)."""
    result = container.run(["ps", "-eo", "rss=,times=,args="]).stdout
    processes = {}
    for line in result.splitlines():
        rss, seconds, args = line.split(None, 2)
        if "synapse.app" not in args:
            continue
        config = [part for part in args.split() if part.endswith(".yaml")]
        name = Path(config[-1]).stem if "generic_worker" in args or "media" in args else "main"
        processes[name] = (int(rss), float(seconds))
    return processes


def report(label: str, load: Load, before: dict[str, tuple[int, float]],
           after: dict[str, tuple[int, float]]) -> None:
    latencies = sorted(load.latencies) or [0.0]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"  {label:9} sent {load.sent / SECONDS:6.1f} msg/s, delivered "
          f"{load.deliveries / SECONDS:7.1f}/s, latency p50 {statistics.median(latencies):6.0f} "
          f"ms p99 {p99:6.0f} ms, errors {load.errors}, Synapse RSS "
          f"{sum(rss for rss, _ in after.values()) // 1024} MiB in {len(after)} processes")
    split = ", ".join(f"{name} {after[name][1] - before.get(name, (0, 0.0))[1]:.1f} s"
                      for name in sorted(after))
    print(f"            CPU during the run: {split}")


def main() -> int:
    cleanup_stale()
    deb = Path(os.environ["MATRIX_STACK_DEB"])
    target = current_target()
    if target.synapse_package != "matrix-synapse-py3":
        print("workers bench: Debian 13 + matrix-synapse-py3 only (sid's Synapse has no "
              "Redis client)")
        return 0
    print(f"machine: {machine()}")
    print(f"workers: {CLIENTS} clients in {ROOMS} rooms over HTTPS through Apache, each "
          f"sending as fast as answered and long-polling /sync, {SECONDS} s; PostgreSQL")
    with Container(ensure_base_tarball(target=target), name="bench-workers",
                   hostname=SERVER) as container:
        container.boot()
        stack.apt_install(container, "postgresql", "python3-psycopg2", "valkey-server")
        stack.preseed(container, {"database": "postgresql"})
        stack.install(container, deb)
        container.write_file("/etc/matrix-synapse/conf.d/90-bench-only.yaml", BENCH_ONLY)
        container.run(["systemctl", "restart", "matrix-synapse"])
        stack.wait_for_client_api(container)
        with stack.host_resolves(SERVER):
            tokens, _users, rooms = asyncio.run(prepare(container))
            for layout in ("off", "auto"):
                if layout != "off":
                    stack.set_stack_value(container, "workers", layout)
                    started = time.monotonic()
                    container.run(["matrix-stack-admin", "apply"], timeout=600)
                    stack.wait_for_client_api(container)
                    print(f"  switched to workers: {layout} in "
                          f"{time.monotonic() - started:.0f} s (apply, until /versions answers)")
                time.sleep(5)  # let the processes settle after their start
                before = synapse_processes(container)
                load = asyncio.run(run_load(container, tokens, rooms))
                report("monolith" if layout == "off" else "workers", load, before,
                       synapse_processes(container))
        print("reproduce: make bench (as root)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
