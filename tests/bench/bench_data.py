"""make bench: backup, restore and migration of a database with 1,000 users, 10,000 messages.

Printed, never asserted. The data is made through Synapse's APIs (admin API for the users,
client API for the messages, 8 senders at once), on SQLite; then backup and restore on
SQLite, db migrate-to-postgresql, and backup and restore again on PostgreSQL.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.bench.bench import add_users, machine
from tests.system import stack
from tests.system.testbed import Container, cleanup_stale, ensure_base_tarball

USERS = 1000
MESSAGES = 10_000
ROOMS = 10
SENDERS = 8


def send_messages(token: str, count: int) -> None:
    rooms = []
    for number in range(ROOMS):
        status, room = stack.synapse_request(
            "POST", "/_matrix/client/v3/createRoom", {"name": f"bench {number}"}, token)
        assert status == 200, room
        rooms.append(urllib.parse.quote(room["room_id"]))

    def send(index: int) -> None:
        status, body = stack.synapse_request(
            "PUT", f"/_matrix/client/v3/rooms/{rooms[index % ROOMS]}/send/m.room.message/"
            f"m{index}", {"msgtype": "m.text", "body": f"bench message {index}"}, token)
        assert status == 200, body

    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(send, range(count)))


def timed_run(container: Container, *argv: str) -> tuple[float, str]:
    started = time.monotonic()
    output = container.run(list(argv), timeout=3600).stdout
    return time.monotonic() - started, output


def backup_and_restore(container: Container, engine: str) -> None:
    directory = f"/root/bench-{engine}"
    seconds, _ = timed_run(container, "matrix-stack-admin", "backup", directory)
    [archive] = container.path(directory).glob("matrix-stack-backup-*.tar")
    size = archive.stat().st_size / 2**20
    print(f"{engine}: backup {seconds:.1f} s, archive {size:.1f} MiB")
    seconds, _ = timed_run(container, "matrix-stack-admin", "restore", "--yes",
                           f"{directory}/{archive.name}")
    print(f"{engine}: restore {seconds:.1f} s (verify, unpack, stop, swap, apply, start, "
          "count)")


def main() -> int:
    cleanup_stale()
    deb = Path(os.environ["MATRIX_STACK_DEB"])
    print(f"machine: {machine()}")
    with Container(ensure_base_tarball(), name="bench-data", hostname=stack.SERVER) as container:
        container.boot()
        stack.install(container, deb)
        stack.apt_install(container, "postgresql", "python3-psycopg2")
        container.write_file("/etc/matrix-synapse/conf.d/90-bench-only.yaml",
                             "bcrypt_rounds: 4\nrc_message:\n  per_second: 10000\n"
                             "  burst_count: 10000\n")
        container.run(["systemctl", "restart", "matrix-synapse"])
        stack.wait_for_client_api(container)
        started = time.monotonic()
        add_users(container, USERS)
        stack.add_user(container, "sender", "sender-password")
        token = stack.login("sender", "sender-password")
        send_messages(token, MESSAGES)
        sqlite = container.path("/var/lib/matrix-synapse/homeserver.db").stat().st_size
        print(f"data: {USERS + 1} users, {MESSAGES} messages in {ROOMS} rooms made in "
              f"{time.monotonic() - started:.0f} s; SQLite file {sqlite / 2**20:.1f} MiB")
        backup_and_restore(container, "sqlite")
        seconds, output = timed_run(container, "matrix-stack-admin", "db",
                                    "migrate-to-postgresql")
        print(f"db migrate-to-postgresql: {seconds:.1f} s ({output.strip().splitlines()[-1]})")
        backup_and_restore(container, "postgresql")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
