"""backup and restore on a booted stack: a purge and a wiped Synapse come back from one archive.

One container serves the whole module, in order: data is made, backed up, two bad archives
are refused while Synapse keeps running, the stack is purged and Synapse's data wiped, the
package is installed again, and the archive brings back the users (same passwords), their
messages, the media and the signing key. Last, the daily timer.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system import stack
from tests.system.stack import SERVER, add_user, install, login
from tests.system.stack import synapse_request as client_api
from tests.system.testbed import Container

pytestmark = pytest.mark.system

BACKUPS = "/root/backups"
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
MESSAGES = [f"before the backup {number}" for number in range(5)]
state: dict[str, Any] = {}


@pytest.fixture(scope="module")
def ct(base_tarball: Path, deb_path: Path) -> Iterator[Container]:
    with stack.installed_stack(base_tarball, deb_path, "backup") as container:
        yield container


def server_keys() -> dict[str, Any]:
    with urllib.request.urlopen(f"{stack.SYNAPSE_URL}/_matrix/key/v2/server", timeout=30) as r:
        return dict(json.load(r)["verify_keys"])


def synapse_started(ct: Container) -> str:
    return stack.unit_start(ct, "matrix-synapse")


def upload(token: str) -> str:
    request = urllib.request.Request(
        f"{stack.SYNAPSE_URL}/_matrix/media/v3/upload?filename=p.png", data=PICTURE,
        method="POST", headers={"Content-Type": "image/png", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.load(response)["content_uri"])


def download(uri: str, token: str) -> bytes:
    server, media_id = uri.removeprefix("mxc://").split("/")
    request = urllib.request.Request(
        f"{stack.SYNAPSE_URL}/_matrix/client/v1/media/download/{server}/{media_id}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def messages(room_id: str, token: str) -> set[str]:
    status, page = client_api(
        "GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages?dir=b&limit=50",
        token=token,
    )
    assert status == 200, page
    return {event["content"].get("body") for event in page["chunk"]}


def archive_in(ct: Container, directory: str) -> list[Path]:
    return sorted(ct.path(directory).glob(f"matrix-stack-backup-{SERVER}-*.tar"))


def rewrite_archive(source: Path, target: Path, change: Any) -> None:
    with tarfile.open(source) as old, tarfile.open(target, "w:", format=tarfile.PAX_FORMAT) as new:
        for member in old:
            stream = old.extractfile(member)
            data = change(member, stream.read()) if stream else None
            if data is not None:
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)


def test_backup_writes_a_root_only_archive_while_synapse_runs(ct: Container) -> None:
    add_user(ct, "alice", "alice-secret-1")
    add_user(ct, "bob", "bob-secret-1")
    token = login("alice", "alice-secret-1")
    status, room = client_api("POST", "/_matrix/client/v3/createRoom", {"name": "kept"}, token)
    assert status == 200, room
    for number, body in enumerate(MESSAGES):
        status, _ = client_api(
            "PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room['room_id'])}"
            f"/send/m.room.message/b{number}", {"msgtype": "m.text", "body": body}, token,
        )
        assert status == 200
    state.update(room=room["room_id"], media=upload(token), keys=server_keys())
    started = synapse_started(ct)

    result = ct.run(["matrix-stack-admin", "backup", BACKUPS], timeout=600)

    [archive] = archive_in(ct, BACKUPS)
    state["archive"] = archive
    assert f"wrote /root/backups/{archive.name}" in result.stdout
    assert "2 users" in result.stdout  # alice and bob (the service account is not created yet)
    assert stack.stat(ct, f"{BACKUPS}/{archive.name}") == "root:root 600"
    assert synapse_started(ct) == started
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert names[-1] == "manifest.json"
    assert manifest["server_name"] == SERVER and manifest["engine"] == "sqlite"
    for wanted in ("database/homeserver.db.gz", "files/etc/matrix-stack/stack.yaml",
                   "files/etc/matrix-synapse/homeserver.signing.key",
                   "files/etc/matrix-stack/secrets/registration_shared_secret"):
        assert wanted in manifest["members"], wanted
    assert manifest["counts"]["media_files"] >= 1
    assert not list(ct.path(BACKUPS).glob(".*")), "no partial file or stage left"


def test_a_corrupted_archive_is_refused_before_anything_stops(ct: Container) -> None:
    archive: Path = state["archive"]
    corrupt = ct.path("/root/corrupt.tar")

    def flip(member: tarfile.TarInfo, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if member.name.endswith(".gz") else data

    rewrite_archive(archive, corrupt, flip)
    started = synapse_started(ct)

    result = ct.run(["matrix-stack-admin", "restore", "--yes", "/root/corrupt.tar"], check=False)

    assert result.returncode == 1
    assert "does not match its checksum: the archive is corrupt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert synapse_started(ct) == started


def test_an_archive_of_another_server_is_refused(ct: Container) -> None:
    def rename(member: tarfile.TarInfo, data: bytes) -> bytes:
        if member.name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest["server_name"] = "other.example.test"
        return json.dumps(manifest).encode()

    rewrite_archive(state["archive"], ct.path("/root/other.tar"), rename)
    started = synapse_started(ct)
    result = ct.run(["matrix-stack-admin", "restore", "--yes", "/root/other.tar"], check=False)
    assert result.returncode == 1
    assert f"is a backup of other.example.test, this server is {SERVER}" in result.stderr
    assert synapse_started(ct) == started


def test_restore_after_purge_and_wipe_brings_everything_back(
    ct: Container, deb_path: Path
) -> None:
    ct.run([*stack.APT, "purge", "matrix-stack"], timeout=600)
    ct.run(["systemctl", "stop", "matrix-synapse"])
    ct.run(["sh", "-c", "rm -rf /var/lib/matrix-synapse/* "
            "/etc/matrix-synapse/homeserver.signing.key"])
    install(ct, deb_path)
    stack.wait_for_client_api(ct)
    assert server_keys() != state["keys"], "the wipe made a new signing key"
    status, _ = client_api("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "alice-secret-1"})
    assert status == 403

    result = ct.run(["matrix-stack-admin", "restore", "--yes", str(
        Path(BACKUPS) / state["archive"].name)], timeout=900)

    assert f"of {SERVER} in" in result.stdout
    assert "kept: /var/lib/matrix-synapse/homeserver.db.before-restore-" in result.stdout
    stack.wait_for_client_api(ct)
    assert server_keys() == state["keys"]
    token = login("alice", "alice-secret-1")
    login("bob", "bob-secret-1")
    assert set(MESSAGES) <= messages(state["room"], token)
    assert download(state["media"], token) == PICTURE
    owner, mode = stack.stat(ct, "/var/lib/matrix-synapse/homeserver.db").split()
    assert owner.startswith("matrix-synapse:") and mode == "600"
    # The stack still administers it: the CLI logs its service account in again.
    listed = ct.run(["matrix-stack-admin", "user", "list", "--json"]).stdout
    users = {user["user_id"] for user in json.loads(listed)}
    assert users >= {f"@alice:{SERVER}", f"@bob:{SERVER}"}


def add_to_archive(source: Path, target: Path, name: str, data: bytes) -> None:
    """Copy an archive with one more member, listed in its manifest with its checksum."""
    with tarfile.open(source) as old, tarfile.open(target, "w:", format=tarfile.PAX_FORMAT) as new:
        for member in old:
            stream = old.extractfile(member)
            content = stream.read() if stream else None
            if member.name == "manifest.json":
                extra = tarfile.TarInfo(name)
                extra.size, extra.mode = len(data), 0o644
                new.addfile(extra, io.BytesIO(data))
                manifest = json.loads(content or b"{}")
                manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(),
                                             "size": len(data)}
                content = json.dumps(manifest).encode()
                member.size = len(content)
            new.addfile(member, io.BytesIO(content) if content is not None else None)


def test_a_restore_that_fails_half_way_puts_everything_back(ct: Container) -> None:
    add_user(ct, "after", "after-secret")  # only in the live data, not in the archive
    broken = "/etc/matrix-synapse/conf.d/60-broken.yaml"
    add_to_archive(state["archive"], ct.path("/root/broken.tar"), "files" + broken,
                   b"database: {name: no-such-engine}\n")

    result = ct.run(["matrix-stack-admin", "restore", "--yes", "/root/broken.tar"],
                    check=False, timeout=900)

    assert result.returncode == 1, result.stdout
    assert "stopping Synapse" in result.stdout
    assert "the previous data is back in place" in result.stderr
    assert not ct.path(broken).exists()
    stack.wait_for_client_api(ct)
    login("after", "after-secret")
    assert set(MESSAGES) <= messages(state["room"], login("alice", "alice-secret-1"))


def test_the_daily_timer_backs_up_and_keeps_the_newest(ct: Container) -> None:
    result = ct.run(["matrix-stack-admin", "backup", "--schedule", "daily", "--keep", "2"])
    assert "enable the daily backup" in result.stdout
    assert ct.run(["systemctl", "is-enabled", "matrix-stack-backup.timer"]).stdout.strip() \
        == "enabled"
    assert "backup_schedule: daily" in stack.read_stack(ct)
    for _ in range(3):
        ct.run(["systemctl", "start", "matrix-stack-backup.service"], timeout=600)
        time.sleep(1.1)  # archive names have a one-second resolution
    assert len(archive_in(ct, "/var/backups/matrix-stack")) == 2
    doctor = ct.run(["matrix-stack-admin", "doctor"], check=False).stdout
    assert "✓ backup: last 0 h ago: /var/backups/matrix-stack/" in doctor
    assert "database: sqlite" in doctor

    ct.run(["matrix-stack-admin", "backup", "--schedule", "off"])
    state_now = ct.run(["systemctl", "is-enabled", "matrix-stack-backup.timer"], check=False)
    assert state_now.stdout.strip() == "disabled"
