"""TURN on a booted stack: a real client's credentials from Synapse, coturn from outside.

The container shares the host's network, so coturn listens on the host's default-route
address and the host reaches it there (loopback peers are denied by design). A user logs
in over http://127.0.0.1:8008; the Allocate with Synapse's credentials is made by aioice
(Debian's python3-aioice, a client independent of matrix-stack's own); the refusals and
the TLS check use matrix-stack's TURN client. The tests share one container, in file order.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.features.turn.config import parse_coturn_config
from matrix_stack.features.turn.credentials import TurnClient, TurnError, turn_credentials
from tests.system import stack
from tests.system.stack import SERVER
from tests.system.testbed import Container, http_request, wait_for

pytestmark = pytest.mark.system

PASSWORD = "Turn-test-S3cret"
TURN_CONF = "/etc/matrix-stack/turnserver.conf"


@dataclass
class FailedInstall:
    """What a first install that failed in its hook left of coturn."""

    output: str
    coturn_state: str
    allocate: str


@pytest.fixture(scope="module")
def booted(base_tarball: Path) -> Iterator[Container]:
    with Container(base_tarball, name="turn", hostname=SERVER) as container:
        container.boot()
        yield container


@pytest.fixture(scope="module")
def failed_first_install(booted: Container, deb_path: Path) -> FailedInstall:
    """Install with an answer the hook refuses (PostgreSQL, none runs here): coturn, which its
    own postinst started on Debian's stock configuration, must not be left running."""
    stack.preseed(booted, {"database": "postgresql"})
    result = stack.install(booted, deb_path, check=False)
    assert result.returncode != 0
    state = booted.run(["systemctl", "is-active", "coturn"], check=False).stdout.strip()
    # apt runs dpkg with its output, the maintainer scripts' included, on its stdout.
    return FailedInstall(result.stdout, state, unauthenticated_allocate(host_address(booted)))


@pytest.fixture(scope="module")
def ct(booted: Container, failed_first_install: FailedInstall) -> Container:
    stack.preseed(booted, {"database": "sqlite"})
    booted.run(["dpkg", "--configure", "-a"], timeout=900)
    stack.wait_for_client_api(booted)
    booted.run(
        ["matrix-stack-admin", "user", "add", "alice", "--password-file", "-"],
        input=PASSWORD + "\n",
    )
    return booted


def host_address(ct: Container) -> str:
    """The host's default-route address: where coturn listens, on any configuration."""
    route = ct.run(["ip", "-4", "route", "get", "192.0.2.1"]).stdout.split()
    return route[route.index("src") + 1]


def unauthenticated_allocate(address: str) -> str:
    """Ask for a relay over TCP without credentials; return what happened, in a word or two."""
    try:
        with TurnClient(address, 3478, "tcp") as client:
            relayed = client.allocate("", "")
    except TurnError as error:
        return f"refused: {error.code} {error.reason}"
    return f"RELAYED at {relayed}"


def test_first_install_failing_in_its_hook_leaves_coturn_stopped(
    failed_first_install: FailedInstall,
) -> None:
    assert "no PostgreSQL server runs on this host" in failed_first_install.output
    assert failed_first_install.coturn_state == "inactive"
    assert failed_first_install.allocate.startswith("refused: 0 cannot connect")


def client_api(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    response = http_request(method, "127.0.0.1", 8008, path, headers=headers, body=body)
    assert response.status == 200, (path, response.status, response.text)
    return response.json()


@pytest.fixture(scope="module")
def turn_answer(ct: Container) -> dict[str, Any]:
    """What a client logged in as alice gets from GET /_matrix/client/v3/voip/turnServer."""
    login = client_api("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD,
    })
    answer = client_api("GET", "/_matrix/client/v3/voip/turnServer", token=login["access_token"])
    assert isinstance(answer, dict)
    return answer


@pytest.fixture(scope="module")
def coturn(ct: Container) -> dict[str, list[str]]:
    """coturn's options as rendered in the container."""
    return parse_coturn_config(ct.read_file(TURN_CONF))


def address(coturn: dict[str, list[str]]) -> str:
    return coturn["listening-ip"][0]


def aioice_allocate(server: tuple[str, int], answer: dict[str, Any], transport: str) -> Any:
    """Allocate a relay with aioice; return the relayed address."""
    from aioice import turn  # python3-aioice (make deps)

    async def scenario() -> Any:
        endpoint, _ = await turn.create_turn_endpoint(
            asyncio.DatagramProtocol, server, answer["username"], answer["password"],
            lifetime=60, transport=transport,
        )
        relayed = endpoint.get_extra_info("sockname")
        endpoint.close()
        await asyncio.sleep(0.1)  # let the Refresh(0) that frees the allocation go out
        return relayed

    return asyncio.run(scenario())


def test_voip_turnserver_hands_a_logged_in_client_credentials_for_a_day(
    turn_answer: dict[str, Any],
) -> None:
    expiry, _, user = turn_answer["username"].partition(":")

    assert user == f"@alice:{SERVER}"
    assert abs(int(expiry) - (time.time() + 86400)) < 120
    assert turn_answer["ttl"] == 86400
    assert turn_answer["uris"] == [
        f"turn:{SERVER}?transport=udp",
        f"turn:{SERVER}?transport=tcp",
        f"turns:{SERVER}:5349?transport=tcp",
    ]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_coturn_accepts_synapse_credentials_for_an_allocate(
    coturn: dict[str, list[str]], turn_answer: dict[str, Any], transport: str
) -> None:
    started = time.monotonic()
    relayed = aioice_allocate((address(coturn), 3478), turn_answer, transport)
    print(f"aioice Allocate over {transport}: {relayed} in {time.monotonic() - started:.3f} s")

    assert relayed[0] == address(coturn)
    assert 49152 <= relayed[1] <= 65535


@pytest.mark.parametrize(("secret", "lifetime"), [("not-the-secret", 600), (None, -60)])
def test_coturn_refuses_wrong_secret_and_expired_credentials(
    ct: Container, coturn: dict[str, list[str]], secret: str | None, lifetime: int
) -> None:
    secret = secret or ct.read_file("/etc/matrix-stack/secrets/turn_shared_secret").strip()
    username, password = turn_credentials(secret, f"@alice:{SERVER}", lifetime, time.time())

    with TurnClient(address(coturn), 3478, "udp") as client, pytest.raises(TurnError) as raised:
        client.allocate(username, password)

    assert (raised.value.code, raised.value.reason) == (401, "Unauthorized")


@pytest.mark.parametrize("peer", ["127.0.0.1", "10.0.0.1"])
def test_coturn_refuses_to_relay_to_loopback_and_private_peers(
    coturn: dict[str, list[str]], turn_answer: dict[str, Any], peer: str
) -> None:
    with TurnClient(address(coturn), 3478, "tcp") as client:
        client.allocate(turn_answer["username"], turn_answer["password"])
        client.create_permission(address(coturn))  # its own address is allowed
        with pytest.raises(TurnError) as raised:
            client.create_permission(peer)
        client.release()

    assert (raised.value.code, raised.value.reason) == (403, "Forbidden IP")


def test_tls_on_5349_answers_with_the_stack_certificate(
    ct: Container, coturn: dict[str, list[str]], turn_answer: dict[str, Any]
) -> None:
    context = ssl.create_default_context(cafile=str(ct.path(stack.SELF_SIGNED_CERT)))
    certificate = ssl.PEM_cert_to_DER_cert(ct.read_file(stack.SELF_SIGNED_CERT))

    client = TurnClient(address(coturn), 5349, "tls", tls_context=context, server_name=SERVER)
    with client:
        served = client.peer_certificate()
        version = client.sock.version()  # type: ignore[attr-defined]
        client.allocate(turn_answer["username"], turn_answer["password"])
        client.release()

    assert served == certificate
    assert version in ("TLSv1.2", "TLSv1.3")


def test_tls_1_1_is_refused_on_5349(coturn: dict[str, list[str]]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is, that is the point
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all

    # sid's coturn answers with a protocol_version alert; Debian 13's never answers the
    # TLS 1.1 ClientHello. Either way no TLS 1.1 session is made.
    with pytest.raises(TurnError, match="TLSV1_ALERT_PROTOCOL_VERSION|handshake operation timed"):
        TurnClient(address(coturn), 5349, "tls", tls_context=context)


def test_turn_credentials_prints_what_synapse_hands_out(
    ct: Container, coturn: dict[str, list[str]], turn_answer: dict[str, Any]
) -> None:
    printed = json.loads(
        ct.run(["matrix-stack-admin", "turn", "credentials", "--user", "alice", "--json"]).stdout
    )

    assert printed["uris"] == turn_answer["uris"] and printed["ttl"] == turn_answer["ttl"]
    assert printed["username"].endswith(f":@alice:{SERVER}")
    assert aioice_allocate((address(coturn), 3478), printed, "udp")[0] == address(coturn)


def turn_test(ct: Container) -> tuple[int, list[str]]:
    started = time.monotonic()
    result = ct.run(["matrix-stack-admin", "turn", "test"], check=False)
    print(f"turn test: exit {result.returncode} in {time.monotonic() - started:.2f} s")
    print(result.stdout + result.stderr)
    return result.returncode, result.stdout.splitlines()


def test_turn_test_passes_on_the_installed_stack(
    ct: Container, coturn: dict[str, list[str]]
) -> None:
    status, lines = turn_test(ct)

    assert status == 0
    assert not [line for line in lines if line.startswith("✗")]
    here = f"{address(coturn)} port"
    for expected in (
        "✓ coturn is running",
        "✓ coturn and Synapse share the TURN secret",
        f"✓ Allocate over UDP at {here} 3478 as @matrix-stack:{SERVER}",
        f"✓ Allocate over TCP at {here} 3478",
        "✓ relaying to 127.0.0.1 is refused (403 Forbidden IP)",
        "✓ relaying to 10.0.0.1 is refused (403 Forbidden IP)",
        f"✓ relaying to this server's own address {address(coturn)} is allowed",
        f"✓ TLS on {here} 5349 for {SERVER}: serves {stack.SELF_SIGNED_CERT}, verified for",
        f"✓ Allocate over TLS at {here} 5349 as @matrix-stack:{SERVER}: relayed address",
        f"  _turns._tcp.{SERVER}. 3600 IN SRV 0 0 5349 {SERVER}.",
    ):
        assert any(line.startswith(expected) for line in lines), expected


def test_turn_test_fails_with_a_clear_line_when_the_secrets_disagree(ct: Container) -> None:
    original = ct.read_file(TURN_CONF)
    edited = "\n".join(
        "static-auth-secret=an-admin-edit" if line.startswith("static-auth-secret=") else line
        for line in original.splitlines()
    )
    ct.write_file(TURN_CONF, edited + "\n", mode=0o640)
    ct.run(["chgrp", "turnserver", TURN_CONF])
    ct.run(["systemctl", "restart", "coturn"])
    try:
        status, lines = turn_test(ct)
    finally:
        ct.write_file(TURN_CONF, original, mode=0o640)
        ct.run(["chgrp", "turnserver", TURN_CONF])
        ct.run(["systemctl", "restart", "coturn"])

    assert status == 1
    assert lines[1].startswith(
        f"✗ coturn's static-auth-secret in {TURN_CONF} is not Synapse's turn_shared_secret_path"
    )
    assert any(line.startswith("✗ Allocate over UDP") and "401 Unauthorized" in line
               for line in lines)


def test_turn_test_fails_with_a_clear_line_when_coturn_is_stopped(ct: Container) -> None:
    ct.run(["systemctl", "stop", "coturn"])
    try:
        status, lines = turn_test(ct)
    finally:
        ct.run(["systemctl", "start", "coturn"])

    assert status == 1
    assert lines == [
        "✗ coturn is not running: start it with systemctl start coturn "
        "(why it stopped: journalctl -u coturn)"
    ]


def test_remove_stops_coturn_rather_than_leave_an_open_relay_and_reinstall_restores_it(
    ct: Container, deb_path: Path, coturn: dict[str, list[str]], turn_answer: dict[str, Any]
) -> None:
    here = host_address(ct)
    assert unauthenticated_allocate(here) == "refused: 401 Unauthorized"

    removed = ct.run([*stack.APT, "remove", "matrix-stack"])

    assert "matrix-stack: coturn stopped and disabled: its own /etc/turnserver.conf is " \
        "Debian's stock file, which relays for anyone" in removed.stdout
    assert ct.run(["systemctl", "is-active", "coturn"], check=False).stdout.strip() == "inactive"
    assert ct.run(["systemctl", "is-enabled", "coturn"], check=False).stdout.strip() == "disabled"
    assert unauthenticated_allocate(here).startswith("refused: 0 cannot connect")
    # Why: started on Debian's stock file, coturn hands a relay to anyone who asks.
    ct.run(["systemctl", "start", "coturn"])
    try:
        opened = wait_for(lambda: unauthenticated_allocate(here).startswith("RELAYED"),
                          timeout=30, what="stock coturn to answer")
    finally:
        ct.run(["systemctl", "stop", "coturn"])
    assert opened

    stack.install(ct, deb_path)
    assert ct.run(["systemctl", "is-enabled", "coturn"], check=False).stdout.strip() == "enabled"
    wait_for(lambda: unauthenticated_allocate(here) == "refused: 401 Unauthorized", timeout=30,
             what="coturn back on matrix-stack's configuration")
    assert aioice_allocate((address(coturn), 3478), turn_answer, "udp")[0] == address(coturn)
