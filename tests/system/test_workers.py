"""Synapse with workers (matrix-stack/workers: auto) on PostgreSQL and Valkey, Debian 13 with
matrix-synapse-py3 only (Debian's matrix-synapse lacks txredisapi: refused there).

Users log in, send and sync through Apache on 443; each worker's journal shows what it
served (sync on the sync worker, an upload on the media worker); a killed worker is restarted
by systemd and a message sent meanwhile reaches the other user; switching workers off again
keeps every account and message. Then two sync workers (auto gives one below eight cores):
each user's syncs stay on one of them, two users' on different ones. Last, apt remove leaves
Synapse one process that serves everything again, media included.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.core.worker_routes import hex_partitions
from tests.system import stack
from tests.system.stack import SERVER, add_user, apt_install, install, journal, preseed
from tests.system.testbed import Container, Target, http_request, wait_for

pytestmark = [pytest.mark.system]


@pytest.fixture()
def workers_stack(base_tarball: Path, deb_path: Path, target: Target) -> Iterator[Container]:
    stack.skip_unless_workers_run(target)
    container = Container(base_tarball, name="workers", hostname=SERVER)
    try:
        container.boot()
        apt_install(container, *stack.WORKER_PACKAGES)
        preseed(container, stack.WORKER_ANSWERS)
        install(container, deb_path)
        stack.wait_for_client_api(container)
        yield container
    finally:
        container.close()


def api(ct: Container, method: str, path: str, token: str = "", body: Any = None,
        headers: dict[str, str] | None = None) -> Any:
    """One client API request through Apache (HTTPS, 443); return the JSON body of a 200."""
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    response = stack.https(ct, path, method=method, body=body, headers={**sent, **(headers or {})})
    assert response.status == 200, (method, path, response.status, response.text)
    return response.json()


def login(ct: Container, user: str, password: str) -> str:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password}
    return str(api(ct, "POST", "/_matrix/client/v3/login", body=body)["access_token"])


def sync(ct: Container, token: str, since: str = "") -> Any:
    query = "timeout=0" + (f"&since={urllib.parse.quote(since)}" if since else "")
    return api(ct, "GET", f"/_matrix/client/v3/sync?{query}", token)


def messages_in(synced: Any, room: str) -> list[str]:
    joined = synced.get("rooms", {}).get("join", {}).get(room, {})
    return [event["content"].get("body", "") for event in joined.get("timeline", {})
            .get("events", []) if event["type"] == "m.room.message"]


def send(ct: Container, token: str, room: str, text: str) -> None:
    path = (f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/"
            f"{time.monotonic_ns()}")
    api(ct, "PUT", path, token, {"msgtype": "m.text", "body": text})


def worker_units(ct: Container) -> list[str]:
    listed = ct.run(["systemctl", "list-units", "--plain", "--no-legend", "--state=active",
                     "matrix-synapse-worker@*"]).stdout
    return sorted(line.split()[0] for line in listed.splitlines() if line.strip())


def main_pid(ct: Container, unit: str) -> str:
    return ct.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()


def test_workers_serve_sync_media_and_survive_a_killed_worker(workers_stack: Container) -> None:
    ct = workers_stack
    cores = int(ct.run(["nproc"]).stdout)
    expected: list[str] | None = [
        "client1", "federation_reader1", "federation_sender1", "media1", "sync1"]
    if cores >= 8:
        expected = None  # auto grows with the cores: checked by the unit tests
    units = worker_units(ct)
    if expected is not None:
        assert units == [f"matrix-synapse-worker@{name}.service" for name in expected]
    assert ct.run(["systemctl", "is-enabled", "matrix-synapse.target"]).stdout.strip() == \
        "enabled"
    assert ct.run(["systemctl", "is-active", "valkey-server@matrix-stack"]).stdout.strip() == \
        "active"
    assert stack.stat(ct, "/etc/valkey/valkey-matrix-stack.conf") == "root:valkey 640"

    add_user(ct, "alice", "alice-pw")
    add_user(ct, "bob", "bob-pw")
    alice, bob = login(ct, "alice", "alice-pw"), login(ct, "bob", "bob-pw")
    room = api(ct, "POST", "/_matrix/client/v3/createRoom", alice,
               {"preset": "private_chat", "invite": [f"@bob:{SERVER}"]})["room_id"]
    api(ct, "POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", bob, {})
    since = sync(ct, bob)["next_batch"]
    send(ct, alice, room, "hello through the workers")
    wait_for(lambda: "hello through the workers" in messages_in(sync(ct, bob, since), room),
             timeout=30, what="bob's sync to show alice's message")

    # Each request went to its kind's worker (Synapse's access log in the worker's journal).
    assert re.search(r"GET /_matrix/client/v3/sync\?", journal(ct, "matrix-synapse-worker@sync1"))
    client_log = journal(ct, "matrix-synapse-worker@client1")
    assert "PUT /_matrix/client/v3/rooms/" in client_log
    assert "POST /_matrix/client/v3/login" in client_log
    upload = stack.https(ct, "/_matrix/media/v3/upload?filename=a.txt", method="POST",
                         body=b"some media", headers={"Authorization": f"Bearer {alice}",
                                                      "Content-Type": "text/plain"})
    assert upload.status == 200, upload.text
    assert "POST /_matrix/media/v3/upload" in journal(ct, "matrix-synapse-worker@media1")
    media_id = upload.json()["content_uri"].removeprefix(f"mxc://{SERVER}/")
    download = stack.https(ct, f"/_matrix/client/v1/media/download/{SERVER}/{media_id}",
                           headers={"Authorization": f"Bearer {bob}"})
    assert (download.status, download.body) == (200, b"some media")
    # The main process logs to its file (log.yaml, flushed at least every 5 s): no sync there.
    time.sleep(6)
    main_log = ct.read_file("/var/log/matrix-synapse/homeserver.log")
    assert "/_matrix/client/v3/login" in main_log or "/_synapse/admin" in main_log
    assert "GET /_matrix/client/v3/sync" not in main_log

    status = ct.run(["matrix-stack-admin", "workers", "status"], check=False)
    assert status.returncode == 0, status.stdout
    assert re.search(r"^sync1 +matrix-synapse-worker@sync1: active, answering on "
                     r"127\.0\.0\.1:8110, replication connected; cpu ", status.stdout, re.M)
    _code, checks = stack.doctor(ct)
    assert checks["worker media1"]["ok"], checks["worker media1"]

    # Killed, the sync worker comes back (Restart=always); a message sent meanwhile arrives.
    since = sync(ct, bob)["next_batch"]
    before = main_pid(ct, "matrix-synapse-worker@sync1")
    ct.run(["systemctl", "kill", "-s", "KILL", "matrix-synapse-worker@sync1"])
    send(ct, alice, room, "sent while sync1 was down")
    wait_for(lambda: main_pid(ct, "matrix-synapse-worker@sync1") not in ("0", before)
             and ct.run(["systemctl", "is-active", "matrix-synapse-worker@sync1"],
                        check=False).stdout.strip() == "active",
             timeout=60, what="systemd to restart matrix-synapse-worker@sync1")
    wait_for(lambda: "sent while sync1 was down" in messages_in(sync(ct, bob, since), room),
             timeout=30, what="the message sent around the killed worker")

    # Off again: one restart of the main process, workers stopped, their files gone, all kept.
    stack.set_stack_value(ct, "workers", "'off'")
    ct.run(["matrix-stack-admin", "apply"], timeout=600)
    stack.wait_for_client_api(ct)
    assert worker_units(ct) == []
    assert not list(ct.path("/etc/matrix-synapse/workers").glob("*.yaml"))
    bob = login(ct, "bob", "bob-pw")
    wait_for(lambda: "sent while sync1 was down" in messages_in(sync(ct, bob), room),
             timeout=30, what="the messages to be there without workers")
    media = stack.https(ct, f"/_matrix/client/v1/media/download/{SERVER}/{media_id}",
                        headers={"Authorization": f"Bearer {bob}"})
    assert (media.status, media.body) == (200, b"some media")

    # Two sync workers: Apache keeps each user's syncs on one (the MD5 of the localpart in
    # the syt_ token: [0-7] sync1, [89a-f] sync2); alice's and bob's fall on different ones.
    assert [sync_worker(user, 2) for user in ("alice", "bob")] == ["sync2", "sync1"]
    stack.set_stack_value(ct, "workers", "'sync=2,client=1,federation-sender=1,media=1'")
    ct.run(["matrix-stack-admin", "apply"], timeout=600)
    stack.wait_for_client_api(ct)
    wait_for(lambda: len(worker_units(ct)) == 5, timeout=120, what="five workers active")
    alice, bob = login(ct, "alice", "alice-pw"), login(ct, "bob", "bob-pw")
    for _ in range(3):
        for token in (alice, bob, login(ct, "alice", "alice-pw")):
            sync(ct, token)
    for user, worker, other in (("alice", "sync2", "sync1"), ("bob", "sync1", "sync2")):
        assert re.search(rf"{{@{user}:[^}}]+}}.*GET /_matrix/client/v3/sync\?",
                         journal(ct, f"matrix-synapse-worker@{worker}")), (user, worker)
        assert not re.search(rf"{{@{user}:[^}}]+}}.*GET /_matrix/client/v3/sync\?",
                             journal(ct, f"matrix-synapse-worker@{other}")), (user, other)

    # apt remove (not purge): Synapse is one process again and serves media itself.
    removed = ct.run([*stack.APT, "remove", "matrix-stack"], check=False, timeout=600)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert worker_units(ct) == []
    settings = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
    assert "enable_media_repo" not in settings and "instance_map" not in settings
    assert re.search(r"^workers: .?sync=2,", ct.read_file("/etc/matrix-stack/stack.yaml"), re.M)
    wait_for(lambda: http_request("GET", "127.0.0.1", 8008,
                                  "/_matrix/client/versions").status == 200,
             timeout=120, what="Synapse on 127.0.0.1:8008 after apt remove")
    bob = stack.login("bob", "bob-pw")
    auth = {"Authorization": f"Bearer {bob}"}
    media = http_request("GET", "127.0.0.1", 8008,
                         f"/_matrix/client/v1/media/download/{SERVER}/{media_id}", headers=auth)
    assert (media.status, media.body) == (200, b"some media")
    upload = http_request("POST", "127.0.0.1", 8008, "/_matrix/media/v3/upload?filename=b.txt",
                          headers={**auth, "Content-Type": "text/plain"}, body=b"after remove")
    assert upload.status == 200, upload.text


def sync_worker(user: str, count: int) -> str:
    """Return the sync worker Apache's rules pick, of count, for a user's syt_ tokens (Synapse
    puts the localpart in them as unpadded URL-safe base64)."""
    key = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
    digit = hashlib.md5(key.encode()).hexdigest()[0]
    index = next(index for index, digits in enumerate(hex_partitions(count))
                 if re.fullmatch(digits, digit))
    return f"sync{index + 1}"
