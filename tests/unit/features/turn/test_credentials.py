"""TURN: credentials against Synapse's own code, the STUN codec, and the client and the
self-test against the real coturn of the Debian sid test root (run chrooted, read-only)."""

from __future__ import annotations

import ast
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import types
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base.checks import Steps, exit_status
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import TURNSERVER_CONF_PATH
from matrix_stack.base.secrets import Secrets
from matrix_stack.core.host import Facts
from matrix_stack.core.render import render_all, turn_address_private
from matrix_stack.features.turn.check import first_pem_block, run_checks, srv_lines
from matrix_stack.features.turn.config import (
    TurnConfig,
    address_warnings,
    credentials_for,
    load_turn_config,
    parse_coturn_config,
    parse_duration,
    srv_records,
)
from matrix_stack.features.turn.credentials import (
    ALLOCATE,
    CREATE_PERMISSION,
    ERROR,
    ERROR_CODE,
    FINGERPRINT,
    MESSAGE_INTEGRITY,
    REQUEST,
    SUCCESS,
    USERNAME,
    Message,
    TurnClient,
    TurnError,
    decode_message,
    decode_xor_address,
    encode_xor_address,
    long_term_key,
    message_type,
    split_type,
    turn_credentials,
)
from tests.unit.helpers import make_settings

SECRET = "n0t-so-secret"
SERVER = "matrix.example.org"
VOIP_PATH = "usr/lib/python3/dist-packages/synapse/rest/client/voip.py"


def sid_root() -> Path | None:
    """Return the newest extracted Debian sid test root (it has matrix-synapse and coturn)."""
    roots = [
        root
        for root in Path("/var/cache/matrix-stack-tests").glob("sid-*.d")
        if (root / VOIP_PATH).is_file() and (root / "usr/bin/turnserver").is_file()
    ]
    return max(roots, key=lambda root: root.stat().st_mtime, default=None)


SID_ROOT = sid_root()

# ---------------------------------------------------------------------------------------------
# credentials
# ---------------------------------------------------------------------------------------------


def synapse_turn_server(voip_py: str, secret: str, user_id: str, lifetime_ms: int, now_ms: int
                        ) -> dict[str, Any]:
    """Run VoipRestServlet.on_GET from Synapse's voip.py as it is, with a fake homeserver."""
    tree = ast.parse(voip_py)
    servlet = next(
        node for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "VoipRestServlet"
    )
    on_get = next(
        node for node in servlet.body
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "on_GET"
    )
    namespace: dict[str, Any] = {
        "base64": base64, "hashlib": hashlib, "hmac": hmac, "SynapseRequest": object,
        "JsonDict": dict,
    }
    exec(compile(ast.Module(body=[on_get], type_ignores=[]), "voip.py", "exec"), namespace)
    voip = types.SimpleNamespace(
        turn_allow_guests=False, turn_uris=["turn:x"], turn_shared_secret=secret,
        turn_username=None, turn_password=None, turn_user_lifetime=lifetime_ms,
    )
    requester = types.SimpleNamespace(user=types.SimpleNamespace(to_string=lambda: user_id))

    async def get_user_by_req(request: object, allow_guest: bool) -> object:
        return requester

    servlet_self = types.SimpleNamespace(
        auth=types.SimpleNamespace(get_user_by_req=get_user_by_req),
        hs=types.SimpleNamespace(
            config=types.SimpleNamespace(voip=voip),
            get_clock=lambda: types.SimpleNamespace(time_msec=lambda: now_ms),
        ),
    )
    status, body = asyncio.run(namespace["on_GET"](servlet_self, None))
    assert status == 200
    return dict(body)


@pytest.mark.skipif(SID_ROOT is None, reason="no extracted Debian sid test root")
@pytest.mark.parametrize(
    ("user_id", "now"),
    [("@alice:example.org", 1_700_000_000.123), ("@bob_ü:matrix.example.org", 1_800_000_000.999)],
)
def test_turn_credentials_equal_synapse_voip_turnserver_answer(user_id: str, now: float) -> None:
    assert SID_ROOT is not None
    voip_py = (SID_ROOT / VOIP_PATH).read_text(encoding="utf-8")
    expected = synapse_turn_server(voip_py, SECRET, user_id, 86_400_000, int(now * 1000))

    assert turn_credentials(SECRET, user_id, 86_400, now) == (
        expected["username"], expected["password"]
    )
    assert expected["ttl"] == 86_400


def test_turn_credentials_are_expiry_colon_user_and_padded_base64_hmac_sha1() -> None:
    username, password = turn_credentials("s3cret", "@a:example.org", 3600, 1_000_000.9)

    assert username == "1003600:@a:example.org"
    digest = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert password == base64.b64encode(digest).decode() and password.endswith("=")


def test_credentials_for_returns_the_endpoint_shape() -> None:
    config = turn_config()

    answer = credentials_for(config, "@a:matrix.example.org", 1_000_000.0)

    assert answer == {
        "username": "1086400:@a:matrix.example.org",
        "password": turn_credentials(SECRET, "@a:matrix.example.org", 86400, 1_000_000.0)[1],
        "ttl": 86400,
        "uris": ["turn:matrix.example.org?transport=udp"],
    }


# ---------------------------------------------------------------------------------------------
# STUN codec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "message_class", "value"),
    [
        (ALLOCATE, REQUEST, 0x0003), (ALLOCATE, SUCCESS, 0x0103), (ALLOCATE, ERROR, 0x0113),
        (CREATE_PERMISSION, REQUEST, 0x0008), (CREATE_PERMISSION, ERROR, 0x0118),
    ],
)
def test_message_type_interleaves_method_and_class_bits(
    method: int, message_class: int, value: int
) -> None:
    assert message_type(method, message_class) == value
    assert split_type(value) == (method, message_class)


def test_xor_address_matches_rfc_5769_sample_response() -> None:
    # RFC 5769 2.2: XOR-MAPPED-ADDRESS 192.0.2.1 port 32853.
    value = bytes.fromhex("0001a147e112a643")
    transaction = bytes.fromhex("b7e7a701bc34d686fa87dfae")

    assert encode_xor_address("192.0.2.1", 32853, transaction) == value
    assert decode_xor_address(value, transaction) == ("192.0.2.1", 32853)


def test_xor_address_round_trips_ipv6_with_the_transaction_id() -> None:
    transaction = bytes(range(12))

    value = encode_xor_address("2001:db8::1", 3478, transaction)

    assert len(value) == 20
    assert decode_xor_address(value, transaction) == ("2001:db8::1", 3478)


def test_encode_adds_integrity_over_the_message_and_a_crc32_fingerprint() -> None:
    key = long_term_key("user", "realm", "pass")
    message = Message(ALLOCATE, REQUEST, attributes=[(USERNAME, b"user")])

    data = message.encode(key)

    assert key == hashlib.md5(b"user:realm:pass").digest()
    assert struct.unpack("!H", data[2:4])[0] == len(data) - 20
    decoded = decode_message(data)
    assert [kind for kind, _ in decoded.attributes] == [USERNAME, MESSAGE_INTEGRITY, FINGERPRINT]
    integrity_at = data.index(struct.pack("!HH", MESSAGE_INTEGRITY, 20))
    signed = data[:2] + struct.pack("!H", integrity_at + 24 - 20) + data[4:integrity_at]
    assert decoded.get(MESSAGE_INTEGRITY) == hmac.new(key, signed, hashlib.sha1).digest()
    crc = zlib.crc32(data[:-8]) ^ 0x5354554E
    assert decoded.get(FINGERPRINT) == struct.pack("!I", crc)


def test_error_without_reason_phrase_gets_the_rfc_name() -> None:
    message = Message(CREATE_PERMISSION, ERROR, attributes=[(ERROR_CODE, b"\0\0\x04\x03")])

    assert decode_message(message.encode()).error() == (403, "Forbidden IP")


def test_decode_refuses_what_is_not_stun() -> None:
    with pytest.raises(TurnError, match="not a STUN message"):
        decode_message(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def test_client_over_udp_retries_then_says_nothing_answered() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        client = TurnClient("127.0.0.1", silent.getsockname()[1], "udp", timeout=0.1)
        with client, pytest.raises(TurnError, match=r"no answer over udp within 0.3 s"):
            client.allocate("u", "p")


def test_client_over_tcp_to_a_closed_port_says_it_cannot_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TurnError, match=f"cannot connect to 127.0.0.1 port {port}"):
        TurnClient("127.0.0.1", port, "tcp")


# ---------------------------------------------------------------------------------------------
# reading the configuration in force
# ---------------------------------------------------------------------------------------------


def turn_config(**coturn: list[str]) -> TurnConfig:
    options = {"use-auth-secret": [""], "static-auth-secret": [SECRET], "realm": [SERVER]}
    options.update(coturn)
    return TurnConfig(
        server_name=SERVER,
        coturn=options,
        synapse_secret=SECRET,
        synapse_secret_origin="turn_shared_secret_path /s",
        uris=("turn:matrix.example.org?transport=udp",),
        lifetime_ms=86_400_000,
    )


def test_parse_coturn_config_keeps_every_value_and_flags() -> None:
    text = "# comment\nuse-auth-secret\nrealm=a.example\ndenied-peer-ip=1.0.0.0-1.0.0.1\n" \
        "denied-peer-ip 2.0.0.0-2.0.0.1\n  listening-port = 3478\n"

    assert parse_coturn_config(text) == {
        "use-auth-secret": [""],
        "realm": ["a.example"],
        "denied-peer-ip": ["1.0.0.0-1.0.0.1", "2.0.0.0-2.0.0.1"],
        "listening-port": ["3478"],
    }


@pytest.mark.parametrize(("value", "ms"), [(5000, 5000), ("1d", 86_400_000), ("90s", 90_000),
                                           ("2h", 7_200_000), ("1500", 1500)])
def test_parse_duration_reads_synapse_durations(value: object, ms: int) -> None:
    assert parse_duration(value) == ms


def write_stack_files(root: Path, *, coturn_secret: str = SECRET) -> None:
    """Write what load_turn_config reads: Synapse's configuration and coturn's."""
    files = {
        "etc/matrix-synapse/homeserver.yaml": "turn_allow_guests: false\n",
        "etc/matrix-synapse/conf.d/server_name.yaml": f"server_name: {SERVER}\n",
        "etc/matrix-synapse/conf.d/50-matrix-stack.yaml": (
            "turn_uris: ['turn:matrix.example.org?transport=udp']\n"
            "turn_shared_secret_path: /etc/matrix-stack/secrets/turn_shared_secret\n"
            "turn_user_lifetime: 1d\n"
        ),
        "etc/matrix-stack/secrets/turn_shared_secret": f"{SECRET}\n",
        "etc/matrix-stack/turnserver.conf": (
            f"use-auth-secret\nstatic-auth-secret={coturn_secret}\n"
        ),
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_load_turn_config_reads_both_sides(tmp_path: Path) -> None:
    write_stack_files(tmp_path, coturn_secret="other")

    config = load_turn_config(tmp_path)

    assert config.synapse_secret == SECRET
    assert config.coturn["static-auth-secret"] == ["other"]
    assert config.lifetime_ms == 86_400_000
    assert config.server_name == SERVER and config.turn_domain == SERVER
    assert config.address == "127.0.0.1"


def test_load_turn_config_without_turn_uris_says_turn_is_off(tmp_path: Path) -> None:
    write_stack_files(tmp_path)
    (tmp_path / "etc/matrix-synapse/conf.d/50-matrix-stack.yaml").write_text("turn_uris: []\n")

    with pytest.raises(MatrixStackError, match="turn_uris is empty"):
        load_turn_config(tmp_path)


def test_srv_records_point_at_the_turn_domain() -> None:
    config = turn_config(realm=["turn.example.org"])

    assert srv_records(config, with_tls=True) == [
        "_stun._udp.matrix.example.org. 3600 IN SRV 0 0 3478 turn.example.org.",
        "_turn._udp.matrix.example.org. 3600 IN SRV 0 0 3478 turn.example.org.",
        "_turns._tcp.matrix.example.org. 3600 IN SRV 0 0 5349 turn.example.org.",
    ]
    assert len(srv_records(config, with_tls=False)) == 2


@pytest.mark.parametrize(
    ("options", "warned"),
    [
        ({"listening-ip": ["192.168.1.5"]}, True),
        ({"listening-ip": ["100.64.0.9"]}, True),
        ({"listening-ip": ["10.0.0.7"], "external-ip": ["198.51.100.7/10.0.0.7"]}, False),
        ({"listening-ip": ["203.0.113.10"]}, False),
    ],
)
def test_address_warnings_only_for_a_private_announced_address(
    options: dict[str, list[str]], warned: bool
) -> None:
    warnings = address_warnings(turn_config(**options))

    assert bool(warnings) is warned
    if warned:
        assert "PUBLIC/PRIVATE" in warnings[0]


# ---------------------------------------------------------------------------------------------
# rendering: private address, certificate
# ---------------------------------------------------------------------------------------------


def rendered(settings: Any, facts: Facts) -> dict[str, str]:
    return {str(s.path): s.text for s in render_all(settings, Secrets(SECRET), facts)}


def test_render_with_a_detected_private_address_warns_in_turnserver_conf() -> None:
    settings = make_settings(turn_listening_ip="", turn_external_ip="")
    facts = Facts(listening_ip="192.168.1.5", external_ip="192.168.1.5")

    text = rendered(settings, facts)[str(TURNSERVER_CONF_PATH)]

    assert turn_address_private(settings, facts)
    assert "# WARNING: 192.168.1.5 is a private address" in text
    assert "listening-ip=192.168.1.5\n" in text


def test_render_with_an_answered_private_address_does_not_warn() -> None:
    settings = make_settings(turn_listening_ip="10.0.0.7", turn_external_ip="10.0.0.7")

    assert not turn_address_private(settings, Facts("10.0.0.7", "10.0.0.7"))


def test_render_acme_gives_coturn_no_tls_and_synapse_no_turns_uri() -> None:
    settings = make_settings(tls="acme", acme_email="a@example.org")
    files = rendered(settings, Facts("203.0.113.10", "203.0.113.10"))

    assert "\nno-tls\n" in files[str(TURNSERVER_CONF_PATH)]
    assert "cert=" not in files[str(TURNSERVER_CONF_PATH)]
    assert "turns:" not in files["/etc/matrix-synapse/conf.d/50-matrix-stack.yaml"]


# ---------------------------------------------------------------------------------------------
# the real coturn (Debian sid's), chrooted into a read-only bind mount of the test root
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a free TCP port whose successor is free too (for TLS)."""
    while True:
        with socket.socket() as probe, socket.socket() as successor:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            try:
                successor.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a directory with a self-signed pair for SERVER, as tls.py makes it."""
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={SERVER}",
         "-addext", f"subjectAltName=DNS:{SERVER}",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        check=True, capture_output=True,
    )
    return directory


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory, certificate: Path) -> Iterator[int]:
    """Run sid's turnserver on 127.0.0.1 as matrix-stack configures it; yield its port.

    TLS listens on the next port, with the pair in certificate (copied to the chroot's /tmp).
    """
    if SID_ROOT is None:
        pytest.skip("no extracted Debian sid test root with coturn")
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("chroot"):
        pytest.skip("running the sid root's coturn needs root, unshare and chroot")
    mountpoint = tmp_path_factory.mktemp("sid")
    port = free_port()
    script = (
        'mount --rbind "$1" "$2" && mount -o remount,bind,ro "$2" && '
        'mount -t tmpfs tmpfs "$2/tmp" && cp "$3"/*.pem "$2/tmp/" && root="$2" && shift 3 && '
        'exec chroot "$root" "$@"'
    )
    argv = [
        "/usr/bin/turnserver", "-n", "--log-file", "stdout", "--listening-ip", "127.0.0.1",
        "--listening-port", str(port), "--tls-listening-port", str(port + 1),
        "--cert", "/tmp/cert.pem", "--pkey", "/tmp/key.pem", "--use-auth-secret",
        "--static-auth-secret", SECRET, "--realm", SERVER, "--pidfile", "/tmp/turnserver.pid",
        "--db", "/tmp/turndb", "--no-tcp-relay", "--user-quota", "2",
        "--denied-peer-ip=10.0.0.0-10.255.255.255",
    ]
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(SID_ROOT), str(mountpoint), str(certificate), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.stdout else b""
                    pytest.skip(f"sid's coturn did not start: {output[-500:]!r}")
                time.sleep(0.1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_real_coturn_allocates_with_synapse_credentials(coturn: int, transport: str) -> None:
    username, password = turn_credentials(SECRET, "@a:matrix.example.org", 600, time.time())

    with TurnClient("127.0.0.1", coturn, transport) as client:
        address, port = client.allocate(username, password)
        client.create_permission("198.51.100.1")
        client.release()

    assert address == "127.0.0.1" and 49152 <= port <= 65535


@pytest.mark.parametrize(("secret", "lifetime"), [("wrong", 600), (SECRET, -60)])
def test_real_coturn_refuses_wrong_secret_and_expired_credentials(
    coturn: int, secret: str, lifetime: int
) -> None:
    username, password = turn_credentials(secret, "@a:matrix.example.org", lifetime, time.time())

    with TurnClient("127.0.0.1", coturn, "udp") as client, pytest.raises(TurnError) as raised:
        client.allocate(username, password)

    assert (raised.value.code, raised.value.reason) == (401, "Unauthorized")


@pytest.mark.parametrize("peer", ["127.0.0.1", "10.0.0.1"])
def test_real_coturn_refuses_loopback_and_private_peers(coturn: int, peer: str) -> None:
    username, password = turn_credentials(SECRET, "@a:matrix.example.org", 600, time.time())

    with TurnClient("127.0.0.1", coturn, "tcp") as client:
        client.allocate(username, password)
        with pytest.raises(TurnError) as raised:
            client.create_permission(peer)
        client.release()

    assert str(raised.value) == "403 Forbidden IP"


def test_real_coturn_release_frees_the_user_quota(coturn: int) -> None:
    username, password = turn_credentials(SECRET, "@quota:matrix.example.org", 600, time.time())

    for attempt in range(3):  # user-quota is 2; coturn frees a released UDP session in ~1 s
        if attempt:
            time.sleep(1.5)
        with TurnClient("127.0.0.1", coturn, "udp") as client:
            client.allocate(username, password)
            client.release()


def coturn_config(
    port: int, user_domain: str, *, coturn_secret: str = SECRET, cert: str = ""
) -> TurnConfig:
    """Return the configuration of the fixture's coturn; user_domain names the test's own
    Synapse server, so that each test mints for its own user (the user-quota is per user)."""
    options = {"listening-ip": ["127.0.0.1"], "listening-port": [str(port)]}
    if cert:
        options.update({"tls-listening-port": [str(port + 1)], "cert": [cert], "pkey": [cert]})
    else:
        options["no-tls"] = [""]
    config = turn_config(**options)
    config.coturn["static-auth-secret"] = [coturn_secret]
    return dataclasses.replace(config, server_name=user_domain)


def passes(lines: list[str], config: TurnConfig, **options: Any) -> bool:
    """Run the TURN test, its lines into lines; return whether every step passed."""
    return exit_status(run_checks(config, steps=Steps(lines.append), **options)) == 0


def test_run_checks_on_a_good_configuration_passes_every_step(coturn: int) -> None:
    lines: list[str] = []

    assert passes(lines, coturn_config(coturn, SERVER), running=True)

    assert [line for line in lines if line.startswith("✗")] == []
    steps = "\n".join(lines)
    assert "✓ coturn and Synapse share the TURN secret" in steps
    assert f"✓ Allocate over UDP at 127.0.0.1 port {coturn} as @matrix-stack:{SERVER}" in steps
    assert f"✓ Allocate over TCP at 127.0.0.1 port {coturn}" in steps
    assert "✓ relaying to 127.0.0.1 is refused (403 Forbidden IP)" in steps
    assert "✓ relaying to 10.0.0.1 is refused (403 Forbidden IP)" in steps
    assert f"  _turn._udp.{SERVER}. 3600 IN SRV 0 0 {coturn} {SERVER}." in srv_lines(
        coturn_config(coturn, SERVER)
    )


def test_run_checks_with_disagreeing_secrets_fails_with_a_clear_line(coturn: int) -> None:
    lines: list[str] = []
    config = coturn_config(coturn, "secrets.example.org", coturn_secret="something-else")

    assert not passes(lines, config, running=True)

    assert lines[1].startswith(
        "✗ coturn's static-auth-secret in /etc/matrix-stack/turnserver.conf is not Synapse's"
    )


def test_run_checks_with_coturn_stopped_says_so_and_stops() -> None:
    lines: list[str] = []

    assert not passes(lines, turn_config(), running=False)

    assert lines == [
        "✗ coturn is not running: start it with systemctl start coturn "
        "(why it stopped: journalctl -u coturn)"
    ]


def test_run_checks_with_tls_verifies_the_served_certificate(
    coturn: int, certificate: Path
) -> None:
    lines: list[str] = []
    config = coturn_config(coturn, "tls.example.org", cert=str(certificate / "cert.pem"))

    assert passes(lines, config, running=True, key_readable=lambda path: True)

    tls = lines.index(
        f"✓ TLS on 127.0.0.1 port {coturn + 1} for {SERVER}: serves "
        f"{certificate / 'cert.pem'}, verified for {SERVER}"
    )
    assert lines[tls + 1].startswith(
        f"✓ Allocate over TLS at 127.0.0.1 port {coturn + 1} as @matrix-stack:tls.example.org: "
        "relayed address 127.0.0.1:"
    )
    assert f"  _turns._tcp.tls.example.org. 3600 IN SRV 0 0 {coturn + 1} {SERVER}." in srv_lines(
        config
    )


def test_run_checks_with_another_certificate_on_disk_says_to_reload_coturn(
    coturn: int, certificate: Path, tmp_path: Path
) -> None:
    renewed = tmp_path / "renewed.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-key", str(certificate / "key.pem"), "-days", "2",
         "-subj", f"/CN={SERVER}", "-addext", f"subjectAltName=DNS:{SERVER}", "-out",
         str(renewed)],
        check=True, capture_output=True,
    )
    lines: list[str] = []

    config = coturn_config(coturn, "renewed.example.org", cert=str(renewed))
    assert not passes(lines, config, running=True, key_readable=lambda path: True)

    failed = [line for line in lines if line.startswith("✗")]
    assert failed == [
        f"✗ TLS on 127.0.0.1 port {coturn + 1} for {SERVER}: coturn serves another certificate "
        f"than {renewed} (renewed since coturn started? systemctl kill --signal=USR2 coturn "
        "reloads it)"
    ]


def test_run_checks_with_a_key_coturn_cannot_read_says_how_to_fix_it(
    coturn: int, certificate: Path
) -> None:
    lines: list[str] = []
    config = coturn_config(coturn, "key.example.org", cert=str(certificate / "cert.pem"))

    assert not passes(lines, config, running=True, key_readable=lambda path: False)

    key = certificate / "cert.pem"
    assert f"✗ coturn (user turnserver) cannot read its key {key}: chgrp turnserver {key}; " \
        f"chmod 0640 {key}; let the group into its directory, then systemctl restart coturn" \
        in lines


def test_first_pem_block_of_a_full_chain_is_the_server_certificate(certificate: Path) -> None:
    pem = (certificate / "cert.pem").read_text()
    chain = pem + pem.replace("CERTIFICATE-----\n", "CERTIFICATE-----\nAAAA\n", 1)

    assert first_pem_block(chain) == pem
    with pytest.raises(ValueError, match="no PEM certificate"):
        first_pem_block("-----BEGIN PRIVATE KEY-----\n")
