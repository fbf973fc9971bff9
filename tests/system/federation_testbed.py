"""Stacks that federate on a private bridge (TESTBED.md §3), for the federation tests.

Each stack is installed during a first boot on the host's network (apt needs the mirror);
then all boot again on a bridge with static addresses, an /etc/hosts naming the other stacks,
a test CA in their trust store (A and B have certificates from it, C keeps its self-signed
one) and a test-only conf.d file that lets Synapse reach the private test range. With
workers, a stack runs on PostgreSQL with matrix-stack/workers: auto (Valkey for their bus).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.system.stack import (
    SELF_SIGNED_CERT,
    WORKER_ANSWERS,
    WORKER_PACKAGES,
    apt_install,
    install,
    journal,
    preseed,
    wait_for_workers,
)
from tests.system.testbed import Container, https_request, wait_for

PASSWORD = "Fed-test-S3cret"
BRIDGE = f"mstfed{os.getpid() % 100000}"
NETWORK = f"10.231.{os.getpid() % 200 + 20}"
HOST_ADDRESS = f"{NETWORK}.1"
ADDRESSES = {"a": f"{NETWORK}.11", "b": f"{NETWORK}.12", "c": f"{NETWORK}.13"}
# A's peers: B allowed, C not. C allows A (so C's attempts reach A, which refuses them).
PEERS = {"a": "b.example.test", "b": "a.example.test", "c": "a.example.test"}
USERS = (("a", "alice"), ("a", "alice/ops"), ("b", "bob"), ("c", "carol"))
CA_IN_CONTAINER = "/usr/local/share/ca-certificates/matrix-stack-test-ca.crt"
TLS_DIR = "/etc/ssl/matrix-stack-test"
SYNAPSE_LOG = "/var/log/matrix-synapse/homeserver.log"
WORKER_UNITS = "matrix-synapse-worker@*"


def log(message: str) -> None:
    print(f"[federation test] {message}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    """One booted stack on the bridge, and how the host reaches it as a client would."""

    letter: str
    container: Container
    cafile: Path
    workers: bool = False

    @property
    def name(self) -> str:
        return f"{self.letter}.example.test"

    @property
    def address(self) -> str:
        return ADDRESSES[self.letter]

    def admin(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.container.run(["matrix-stack-admin", *args], input=input, check=check)

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            port: int = 443) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = https_request(method, self.address, port, path, server_name=self.name,
                                 cafile=self.cafile, headers=headers, body=body, timeout=30)
        try:
            return response.status, response.json()
        except ValueError:
            return response.status, response.text

    def login(self, user: str) -> str:
        status, body = self.api("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user}, "password": PASSWORD,
        })
        assert status == 200, body
        return str(body["access_token"])

    def main_log(self) -> str:
        """Return what Synapse's main process logged (its file, as log.yaml says)."""
        return self.container.read_file(SYNAPSE_LOG)

    def worker_log(self, kind: str) -> str:
        """Return what the workers of one kind (federation_sender, ...) logged: their journal."""
        return journal(self.container, f"matrix-synapse-worker@{kind}*")

    def synapse_log(self) -> str:
        """Return what every Synapse process logged: the main process's file, then the
        workers' journals (none without workers)."""
        return self.main_log() + journal(self.container, WORKER_UNITS)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path) -> Path:
    """Make a test CA and a certificate for A and for B (each also naming its Element)."""
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca), "-days", "3",
            "-subj", "/CN=matrix-stack federation test CA",
            # Python 3.13 verifies strictly (VERIFY_X509_STRICT), as real CAs require.
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for letter in ("a", "b"):
        name = f"{letter}.example.test"
        (directory / f"{letter}.ext").write_text(
            f"subjectAltName=DNS:{name},DNS:element.{name}\n"
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            "keyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(directory / f"{letter}.key"), "-out",
                str(directory / f"{letter}.csr"), "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", str(directory / f"{letter}.csr"), "-CA", str(ca),
                "-CAkey", str(ca_key), "-CAcreateserial", "-days", "3",
                "-out", str(directory / f"{letter}.crt"), "-extfile",
                str(directory / f"{letter}.ext"))
    return ca


def share_apt_cache(source: Container, target: Container) -> None:
    """Give target the package lists and .debs source downloaded (saves a download)."""
    for directory, suffix in (("/var/lib/apt/lists", ""), ("/var/cache/apt/archives", ".deb")):
        for entry in source.path(directory).iterdir():
            # A file: source's index is a link into the root (/srv/...): copied as a link.
            wanted = entry.is_symlink() or entry.is_file()
            if wanted and entry.name != "lock" and entry.name.endswith(suffix):
                shutil.copy2(entry, target.path(directory) / entry.name, follow_symlinks=False)


def install_stack(letter: str, container: Container, pki: Path, deb: Path, *,
                  workers: bool = False) -> None:
    """First boot, on the host's network: trust the test CA, preseed, install, power off."""
    name = f"{letter}.example.test"
    container.copy_in(pki / "ca.crt", CA_IN_CONTAINER)
    answers = {
        "server-name": name,
        "turn-enable": "false",
        "federation": "allow-list",
        "federation-domains": PEERS[letter],
        # No Element download during the install (there is no network on the bridge).
        "element-source": "file:///srv/no-element/",
    }
    if letter in ("a", "b"):
        container.copy_in(pki / f"{letter}.crt", f"{TLS_DIR}/{letter}.crt")
        container.copy_in(pki / f"{letter}.key", f"{TLS_DIR}/{letter}.key", mode=0o600)
        answers.update({"tls": "files", "tls-cert": f"{TLS_DIR}/{letter}.crt",
                        "tls-key": f"{TLS_DIR}/{letter}.key"})
    started = time.monotonic()
    container.boot()
    container.run(["update-ca-certificates"])
    if workers:
        apt_install(container, *WORKER_PACKAGES)
        answers.update(WORKER_ANSWERS)
    preseed(container, answers)
    install(container, deb)
    # TURN is off in these stacks, but coturn stays enabled; on the bridge it would wait a
    # minute at boot for the address it was configured with on the host's network.
    container.run(["systemctl", "disable", "--now", "coturn"])
    container.poweroff()
    log(f"{name} installed in {time.monotonic() - started:.0f} s")


def boot_on_bridge(letter: str, container: Container) -> None:
    """Second boot, on the bridge: static address, hosts, the test range whitelisted."""
    hosts = container.read_file("/etc/hosts")
    for other, address in ADDRESSES.items():
        if other != letter:
            hosts += f"{address}\t{other}.example.test element.{other}.example.test\n"
    # A name whose address serves another name's certificate (B's): a wrong certificate.
    hosts += f"{ADDRESSES['b']}\twrong.example.test\n"
    container.write_file("/etc/hosts", hosts)
    # Tests only: Synapse refuses private ranges by default (ip_range_blacklist).
    container.write_file(
        "/etc/matrix-synapse/conf.d/90-test-only.yaml",
        f"ip_range_whitelist: [{NETWORK}.0/24]\nbcrypt_rounds: 4\n",
    )
    container.network_bridge = BRIDGE
    container.boot()
    container.run(["ip", "addr", "add", f"{ADDRESSES[letter]}/24", "dev", "host0"])
    container.run(["ip", "link", "set", "host0", "up"])
    container.run(["ip", "route", "add", "default", "via", HOST_ADDRESS])
    # No DNS server on the test network: fail SRV lookups at once rather than time out.
    container.run(["sh", "-c", "echo nameserver 127.0.0.1 > /etc/resolv.conf"])


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def remove_stale_bridges() -> None:
    """Delete test bridges that a killed run left behind (those with no container attached)."""
    for line in ip("-o", "link", "show", "type", "bridge").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("mstfed") and not ip("-o", "link", "show", "master", name).stdout:
            ip("link", "del", name, check=False)


@contextlib.contextmanager
def bridge() -> Iterator[None]:
    """A host bridge with an address on the test range, deleted even when a test fails."""
    remove_stale_bridges()
    ip("link", "add", BRIDGE, "type", "bridge")
    try:
        ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        yield
    finally:
        ip("link", "del", BRIDGE, check=False)


@contextlib.contextmanager
def federating_stacks(letters: Sequence[str], base_tarball: Path, deb: Path, pki: Path, *,
                      workers: bool = False) -> Iterator[dict[str, Stack]]:
    """Install, then boot on the bridge, the stacks named by letters, with their users made;
    close them and delete the bridge at the end, pass or fail."""
    started = time.monotonic()
    ca = make_pki(pki)
    prefix = "fedw" if workers else "fed"
    containers: dict[str, Container] = {}
    try:
        with bridge():
            previous: Container | None = None
            for letter in letters:
                container = Container(base_tarball, name=f"{prefix}-{letter}",
                                      hostname=f"{letter}.example.test")
                containers[letter] = container
                if previous is not None:
                    share_apt_cache(previous, container)
                install_stack(letter, container, pki, deb, workers=workers)
                previous = container
            for letter, container in containers.items():
                moment = time.monotonic()
                boot_on_bridge(letter, container)
                log(f"{letter}.example.test booted on the bridge in "
                    f"{time.monotonic() - moment:.0f} s")
            result = {}
            for letter, container in containers.items():
                cafile = ca if letter != "c" else container.path(SELF_SIGNED_CERT)
                result[letter] = Stack(letter, container, cafile, workers)
            moment = time.monotonic()
            for one in result.values():

                def answers(one: Stack = one) -> bool:
                    return bool(one.api("GET", "/_matrix/client/versions")[0] == 200)

                wait_for(answers, timeout=120, what=f"{one.name} to answer on the bridge")
                if one.workers:
                    wait_for_workers(one.container)
            log(f"Synapse answered on the bridge after {time.monotonic() - moment:.0f} s more")
            moment = time.monotonic()
            for letter, user in USERS:
                if letter in result:
                    result[letter].admin("user", "add", user, "--password-file", "-",
                                         input=PASSWORD)
            log(f"users made in {time.monotonic() - moment:.0f} s")
            log(f"{len(result)} stacks up in {time.monotonic() - started:.0f} s")
            yield result
    finally:
        for container in containers.values():
            with contextlib.suppress(Exception):
                container.close()


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def sync(stack: Stack, token: str) -> Any:
    status, body = stack.api("GET", "/_matrix/client/v3/sync?timeout=0", token=token)
    assert status == 200, body
    return body


def send(stack: Stack, token: str, room_id: str, text: str) -> str:
    transaction = f"t{time.monotonic_ns()}"
    status, body = stack.api(
        "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{transaction}",
        {"msgtype": "m.text", "body": text}, token=token)
    assert status == 200, body
    return str(body["event_id"])


def bodies(stack: Stack, token: str, room_id: str) -> list[str]:
    status, body = stack.api(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/messages?dir=b&limit=50", token=token)
    assert status == 200, body
    return [event["content"].get("body", "") for event in body["chunk"]
            if event["type"] == "m.room.message"]


def arrives(stack: Stack, token: str, room_id: str, text: str) -> float:
    """Wait until text shows in the room on stack; return how long it took."""
    started = time.monotonic()
    wait_for(lambda: text in bodies(stack, token, room_id), timeout=60, interval=0.3,
             what=f"{text!r} to arrive on {stack.name}")
    return time.monotonic() - started
