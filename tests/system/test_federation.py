"""Federation between three booted stacks on a private bridge (TESTBED.md §3).

A and B allow each other; C allows A, but A does not allow C. Each stack is installed during a
first boot on the host's network (apt needs the mirror); then all three boot again on a bridge
with static addresses, an /etc/hosts naming the other stacks, a test CA in their trust store
(A and B have certificates from it, C keeps its self-signed one) and a test-only conf.d file
that lets Synapse reach the private test range. The tests share the three stacks in file
order; switching A's federation off comes last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.system.stack import SELF_SIGNED_CERT, install, preseed, unit_runs
from tests.system.testbed import Container, https_request, wait_for

pytestmark = pytest.mark.system

PASSWORD = "Fed-test-S3cret"
BRIDGE = f"mstfed{os.getpid() % 100000}"
NETWORK = f"10.231.{os.getpid() % 200 + 20}"
HOST_ADDRESS = f"{NETWORK}.1"
ADDRESSES = {"a": f"{NETWORK}.11", "b": f"{NETWORK}.12", "c": f"{NETWORK}.13"}
# A's peers: B allowed, C not. C allows A (so C's attempts reach A, which refuses them).
PEERS = {"a": "b.example.test", "b": "a.example.test", "c": "a.example.test"}
CA_IN_CONTAINER = "/usr/local/share/ca-certificates/matrix-stack-test-ca.crt"
TLS_DIR = "/etc/ssl/matrix-stack-test"
SYNAPSE_LOG = "/var/log/matrix-synapse/homeserver.log"
NEGATIVE_WAIT = 8.0


def log(message: str) -> None:
    print(f"[federation test] {message}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    """One booted stack on the bridge, and how the host reaches it as a client would."""

    letter: str
    container: Container
    cafile: Path

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

    def synapse_log(self) -> str:
        return self.container.read_file(SYNAPSE_LOG)


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


def install_stack(letter: str, container: Container, pki: Path, deb: Path) -> None:
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


@pytest.fixture(scope="module")
def stacks(base_tarball: Path, deb_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    started = time.monotonic()
    pki = tmp_path_factory.mktemp("federation-pki")
    ca = make_pki(pki)
    containers: dict[str, Container] = {}
    try:
        with bridge():
            previous: Container | None = None
            for letter in ("a", "b", "c"):
                container = Container(base_tarball, name=f"fed-{letter}",
                                      hostname=f"{letter}.example.test")
                containers[letter] = container
                if previous is not None:
                    share_apt_cache(previous, container)
                install_stack(letter, container, pki, deb_path)
                previous = container
            for letter, container in containers.items():
                moment = time.monotonic()
                boot_on_bridge(letter, container)
                log(f"{letter}.example.test booted on the bridge in "
                    f"{time.monotonic() - moment:.0f} s")
            result = {}
            for letter, container in containers.items():
                cafile = ca if letter != "c" else container.path(SELF_SIGNED_CERT)
                result[letter] = Stack(letter, container, cafile)
            moment = time.monotonic()
            for one in result.values():

                def answers(one: Stack = one) -> bool:
                    return bool(one.api("GET", "/_matrix/client/versions")[0] == 200)

                wait_for(answers, timeout=120, what=f"{one.name} to answer on the bridge")
            log(f"Synapse answered on the bridge after {time.monotonic() - moment:.0f} s more")
            moment = time.monotonic()
            for letter, user in (("a", "alice"), ("a", "alice/ops"), ("b", "bob"), ("c", "carol")):
                result[letter].admin("user", "add", user, "--password-file", "-",
                                     input=PASSWORD)
            log(f"four users made in {time.monotonic() - moment:.0f} s")
            log(f"three stacks up in {time.monotonic() - started:.0f} s")
            yield result
    finally:
        for container in containers.values():
            with contextlib.suppress(Exception):
                container.close()


@pytest.fixture(scope="module")
def room(stacks: dict[str, Stack]) -> dict[str, str]:
    """A room on A that alice made and bob (of B) joined; returns ids and tokens."""
    a, b = stacks["a"], stacks["b"]
    alice, bob = a.login("alice"), b.login("bob")
    status, body = a.api("POST", "/_matrix/client/v3/createRoom", {
        "preset": "private_chat", "name": "federation test",
        "invite": ["@bob:b.example.test"],
    }, token=alice)
    assert status == 200, body
    room_id = body["room_id"]
    started = time.monotonic()
    wait_for(lambda: room_id in sync(b, bob).get("rooms", {}).get("invite", {}),
             timeout=60, what="bob on B to see the invitation from A")
    log(f"invitation A -> B arrived in {time.monotonic() - started:.1f} s")
    status, body = b.api("POST", f"/_matrix/client/v3/join/{quote(room_id)}"
                         "?server_name=a.example.test", {}, token=bob)
    assert status == 200, body
    return {"room_id": room_id, "alice": alice, "bob": bob}


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


def check_lines(stack: Stack, server: str) -> tuple[int, list[str]]:
    result = stack.admin("federation", "check", server, check=False)
    log(f"federation check {server} on {stack.name} (exit {result.returncode}):\n"
        + result.stdout.rstrip())
    return result.returncode, result.stdout.splitlines()


def test_federation_check_from_a_passes_every_line_for_b(stacks: dict[str, Stack]) -> None:
    started = time.monotonic()
    code, lines = check_lines(stacks["a"], "b.example.test")
    log(f"federation check b.example.test took {time.monotonic() - started:.1f} s")

    assert code == 0, lines
    checks = lines[:-1]
    assert all(line.startswith("✓ ") for line in checks), lines
    b = ADDRESSES["b"]
    assert checks[0] == "✓ well-known: delegates to b.example.test:8448"
    assert checks[1] == "✓ srv: not used: b.example.test:8448 has an explicit port"
    assert checks[2] == f"✓ dns: b.example.test -> {b}"
    assert checks[3].startswith(f"✓ {b}:8448 tls: certificate valid for b.example.test, "
                                "issued by matrix-stack federation test CA, until ")
    assert checks[4] == f"✓ {b}:8448 keys: server_name is b.example.test"
    assert any(line.startswith(f"✓ {b}:8448 keys: ed25519:") for line in checks)
    assert checks[-2].startswith(f"✓ {b}:8448 version: federation API answers: Synapse ")
    assert checks[-1] == "✓ allow-list: b.example.test is on this server's allow-list"
    assert lines[-1] == "b.example.test: every check passed"

    report = json.loads(stacks["a"].admin("federation", "check", "b.example.test",
                                          "--json").stdout)
    assert report["ok"] is True and len(report["checks"]) == len(checks)


def test_messages_from_a_arrive_on_b_and_back(stacks: dict[str, Stack],
                                              room: dict[str, str]) -> None:
    a, b = stacks["a"], stacks["b"]
    send(a, room["alice"], room["room_id"], "hello B, from A")
    delay = arrives(b, room["bob"], room["room_id"], "hello B, from A")
    log(f"A -> B message arrived in {delay:.1f} s")
    send(b, room["bob"], room["room_id"], "hello A, from B")
    delay = arrives(a, room["alice"], room["room_id"], "hello A, from B")
    log(f"B -> A message arrived in {delay:.1f} s")


def test_encoded_slashes_reach_synapse_unchanged_on_443_and_8448(
    stacks: dict[str, Stack], room: dict[str, str]
) -> None:
    a, b = stacks["a"], stacks["b"]
    alias = quote("#team/ops:a.example.test")
    status, body = a.api("PUT", f"/_matrix/client/v3/directory/room/{alias}",
                         {"room_id": room["room_id"]}, token=room["alice"])
    assert status == 200, body
    status, body = a.api("GET", f"/_matrix/client/v3/directory/room/{alias}")
    assert (status, body.get("room_id")) == (200, room["room_id"])
    # B looks the alias up from A over federation.
    status, body = b.api("GET", f"/_matrix/client/v3/directory/room/{alias}", token=room["bob"])
    assert (status, body.get("room_id")) == (200, room["room_id"])

    # Synapse itself answers (JSON), and logs the path with %2F as sent.
    client_path = "/_matrix/client/v3/directory/room/%23probe%2Fslash%3Aa.example.test"
    status, body = a.api("GET", client_path)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    federation_path = ("/_matrix/federation/v1/make_join/%21probe%2Fslash%3Aa.example.test/"
                       "%40x%2Fy%3Ab.example.test")
    status, body = a.api("GET", federation_path, port=8448)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    # matrix-synapse-py3's log.yaml buffers INFO lines for a few seconds before writing them.
    wanted = (f'"GET {client_path} HTTP/1.1"', f'"GET {federation_path} HTTP/1.1"')
    wait_for(lambda: all(line in a.synapse_log() for line in wanted), timeout=30,
             what="both requests in Synapse's log, paths as sent")

    # Signed federation requests whose path holds %2F: @alice/ops of A joins a room of B that
    # A is not in yet, so A asks B's 8448 for /make_join/ROOM/%40alice%2Fops%3Aa.example.test.
    status, body = b.api("POST", "/_matrix/client/v3/createRoom", {
        "preset": "private_chat", "invite": ["@alice/ops:a.example.test"],
    }, token=room["bob"])
    assert status == 200, body
    room_on_b = body["room_id"]
    ops = a.login("alice/ops")
    wait_for(lambda: room_on_b in sync(a, ops).get("rooms", {}).get("invite", {}),
             timeout=60, what="@alice/ops to see the invitation from B")
    status, body = a.api("POST", f"/_matrix/client/v3/join/{quote(room_on_b)}"
                         "?server_name=b.example.test", {}, token=ops)
    assert status == 200, body
    make_join = f"/_matrix/federation/v1/make_join/{quote(room_on_b)}/"
    wait_for(lambda: f"{make_join}%40alice%2Fops%3Aa.example.test?" in b.synapse_log(),
             timeout=30, what="B's log of the signed make_join with %2F in its path")
    send(a, ops, room_on_b, "from a user with a slash")
    arrives(b, room["bob"], room_on_b, "from a user with a slash")


def test_c_is_refused_by_a_both_ways(stacks: dict[str, Stack], room: dict[str, str]) -> None:
    a, c = stacks["a"], stacks["c"]
    status, body = a.api("POST", f"/_matrix/client/v3/rooms/{quote(room['room_id'])}/invite",
                         {"user_id": "@carol:c.example.test"}, token=room["alice"])
    assert status == 403, body
    assert "Federation denied with c.example.test" in body["error"]

    carol = c.login("carol")
    status, body = c.api("POST", f"/_matrix/client/v3/join/{quote(room['room_id'])}"
                         "?server_name=a.example.test", {}, token=carol)
    assert status != 200, body
    wait_for(lambda: "Federation denied with c.example.test" in a.synapse_log(), timeout=30,
             what="A to log that it refused C")


def test_federation_check_against_wrong_certificates_fails_with_clear_lines(
    stacks: dict[str, Stack],
) -> None:
    a = stacks["a"]
    code, lines = check_lines(a, "c.example.test")
    c = ADDRESSES["c"]
    assert code == 1
    assert lines[0].startswith("! well-known: https://c.example.test/.well-known/matrix/server "
                               "unreachable (certificate not trusted: self-signed certificate)")
    assert (f"✗ {c}:8448 tls: self-signed certificate (c.example.test, element.c.example.test): "
            "other servers refuse it; use one from a CA (tls: acme, or tls: files)") in lines
    assert ("✗ allow-list: c.example.test is not on this server's allow-list; add it with: "
            "matrix-stack-admin federation allow c.example.test") in lines
    assert lines[-1].startswith("c.example.test: 2 of ")

    code, lines = check_lines(a, "wrong.example.test")
    b = ADDRESSES["b"]
    assert code == 1
    failed = [line for line in lines if line.startswith("✗")]
    assert failed == [
        f"✗ {b}:8448 tls: not valid for wrong.example.test: the certificate names "
        "b.example.test, element.b.example.test",
        f"✗ {b}:8448 keys: server_name is 'b.example.test', not 'wrong.example.test'",
        "✗ allow-list: wrong.example.test is not on this server's allow-list; add it with: "
        "matrix-stack-admin federation allow wrong.example.test",
    ], lines


def test_list_key_servers_and_proxy_config_on_a_real_stack(stacks: dict[str, Stack]) -> None:
    a = stacks["a"]
    assert a.admin("federation", "list").stdout.splitlines() == [
        "mode: allow-list", "  b.example.test"]
    assert a.admin("federation", "key-servers", "--json").stdout.strip() == "[]"
    result = a.admin("proxy-config", "traefik", "--backend", "10.0.0.5")
    assert "behind-proxy" in result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["http"]["routers"]["matrix-stack"]["rule"] == (
        "Host(`a.example.test`) || Host(`element.a.example.test`)")


def test_federation_mode_off_on_a_stops_federation_with_b(
    stacks: dict[str, Stack], room: dict[str, str]
) -> None:
    a, b = stacks["a"], stacks["b"]
    with unit_runs(a.container, ("matrix-synapse", "apache2")) as changed:
        started = time.monotonic()
        result = a.admin("federation", "mode", "off")
        log(f"federation mode off took {time.monotonic() - started:.1f} s")
    assert result.stdout.splitlines()[0] == "federation: allow-list -> off"
    assert changed == {"matrix-synapse": True, "apache2": False}
    # Quoted: YAML 1.1 reads a bare off as false (the config script strips the quotes).
    assert "\nfederation: 'off'\n" in a.container.read_file("/etc/matrix-stack/stack.yaml")
    element = json.loads(a.container.read_file("/etc/matrix-stack/element/config.json"))
    assert element["default_federate"] is False
    wait_for(lambda: a.api("GET", "/_matrix/client/versions")[0] == 200, timeout=120,
             what="A's Synapse to answer again")

    status, body = a.api("POST", f"/_matrix/client/v3/rooms/{quote(room['room_id'])}/invite",
                         {"user_id": "@nobody:b.example.test"}, token=room["alice"])
    assert status == 403 and "Federation denied with b.example.test" in body["error"], body
    send(a, room["alice"], room["room_id"], "A after off")
    send(b, room["bob"], room["room_id"], "B after off")
    time.sleep(NEGATIVE_WAIT)
    assert "A after off" not in bodies(b, room["bob"], room["room_id"])
    assert "B after off" not in bodies(a, room["alice"], room["room_id"])

    code, lines = check_lines(a, "b.example.test")
    assert code == 1
    assert lines[-2] == ("✗ allow-list: federation is off here (empty "
                         "federation_domain_whitelist); run: matrix-stack-admin federation "
                         "mode allow-list")
