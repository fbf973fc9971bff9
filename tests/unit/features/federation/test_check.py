"""federation check: resolution with fake DNS and well-known, then real TLS servers on loopback.

The servers are Python HTTPS servers on 127.0.0.1 with certificates from a CA made here by
openssl, serving keys signed with signedjson as Synapse signs them.
"""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from matrix_stack.base.checks import Status
from matrix_stack.base.errors import SettingsError
from matrix_stack.features.federation.check import judge_allow_list, judge_keys, run_check
from matrix_stack.features.federation.resolve import (
    WELL_KNOWN_MAX_BYTES,
    Endpoint,
    HttpAnswer,
    Network,
    ServerName,
    SrvRecord,
    discover,
    fetch_url,
    lookup_srv,
    parse_server_name,
    parse_well_known,
)
from tests.fake_dns import fake_dns_server

NOW = 1_800_000_000.0
SIGNING_KEY = generate_signing_key("auto")


def signed_keys(server_name: str, valid_until_ts: int) -> dict[str, Any]:
    """Return a /_matrix/key/v2/server answer signed as Synapse signs it."""
    body = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "old_verify_keys": {},
        "verify_keys": {
            "ed25519:auto": {"key": encode_verify_key_base64(get_verify_key(SIGNING_KEY))}
        },
    }
    return dict(sign_json(body, server_name, SIGNING_KEY))


def statuses(results: list[Any]) -> list[tuple[str, Status]]:
    return [(result.name, result.status) for result in results]


# -- server names and resolution (no network) --------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.ORG", ServerName("example.org")),
        ("example.org:8448", ServerName("example.org", 8448)),
        ("192.0.2.7", ServerName("192.0.2.7")),
        ("[2001:db8::7]:8448", ServerName("2001:db8::7", 8448)),
    ],
)
def test_parse_server_name_splits_host_and_port(text: str, expected: ServerName) -> None:
    assert parse_server_name(text) == expected


@pytest.mark.parametrize("text", ["bad name", "example.org:0", "[2001:db8::zz]", "[::1]x"])
def test_parse_server_name_refuses_what_is_not_a_server_name(text: str) -> None:
    with pytest.raises(SettingsError):
        parse_server_name(text)


def test_well_known_delegation_with_a_port_is_followed() -> None:
    answer = HttpAnswer(200, "application/json", b'{"m.server": "matrix.example.org:443"}')

    result, delegated = parse_well_known(answer)

    assert result.status is Status.PASS
    assert result.detail == "delegates to matrix.example.org:443"
    assert delegated == ServerName("matrix.example.org", 443)


def test_well_known_after_a_redirect_says_where_it_came_from() -> None:
    answer = HttpAnswer(200, "application/json", b'{"m.server": "m.example.org"}',
                        "https://www.example.org/.well-known/matrix/server")

    result, _ = parse_well_known(answer)

    assert "(redirected to https://www.example.org/.well-known/matrix/server)" in result.detail


def test_well_known_served_as_text_still_delegates_but_says_so() -> None:
    result, delegated = parse_well_known(HttpAnswer(200, "text/plain", b'{"m.server": "m.org"}'))

    assert delegated == ServerName("m.org")
    assert "served as text/plain; application/json is expected" in result.detail


@pytest.mark.parametrize(
    ("answer", "status", "reason"),
    [
        (HttpAnswer(404, "text/html", b""), Status.PASS, "none published (404)"),
        (HttpAnswer(500, "text/html", b""), Status.WARN, "HTTP 500"),
        (HttpAnswer(200, "application/json", b"{"), Status.FAIL, "is not JSON"),
        (HttpAnswer(200, "application/json", b"{}"), Status.FAIL, 'no "m.server"'),
        (HttpAnswer(200, "application/json", b'{"m.server": "a b"}'), Status.FAIL,
         "is not a server name"),
        (HttpAnswer(200, "application/json", b" " * (WELL_KNOWN_MAX_BYTES + 1)), Status.FAIL,
         "larger than 50 KiB"),
    ],
)
def test_well_known_that_does_not_delegate_says_why(
    answer: HttpAnswer, status: Status, reason: str
) -> None:
    result, delegated = parse_well_known(answer)

    assert (result.status, delegated) == (status, None)
    assert reason in result.detail


def fake_network(
    well_known: HttpAnswer | Exception,
    srv: dict[str, list[SrvRecord] | Exception] | None = None,
    addresses: dict[str, list[str]] | None = None,
) -> Network:
    def fetch(host: str) -> HttpAnswer:
        if isinstance(well_known, Exception):
            raise well_known
        return well_known

    def lookup(name: str) -> list[SrvRecord] | None:
        value = (srv or {}).get(name)
        if isinstance(value, Exception):
            raise value
        return value

    def resolve(host: str, port: int) -> list[str]:
        if host not in (addresses or {}):
            raise OSError(-2, "Name or service not known")
        return (addresses or {})[host]

    return Network(fetch_well_known=fetch, lookup_srv=lookup, resolve=resolve)


NO_WELL_KNOWN = HttpAnswer(404, "text/html", b"")


def test_discover_without_delegation_uses_port_8448_and_the_server_name_for_tls() -> None:
    network = fake_network(NO_WELL_KNOWN, addresses={"example.org": ["192.0.2.1", "2001:db8::1"]})

    results, endpoints = discover(ServerName("example.org"), network)

    assert statuses(results) == [("well-known", Status.PASS), ("srv", Status.PASS),
                                 ("dns", Status.PASS)]
    assert endpoints == [
        Endpoint("192.0.2.1", 8448, "example.org", "example.org"),
        Endpoint("2001:db8::1", 8448, "example.org", "example.org"),
    ]
    assert endpoints[1].label == "[2001:db8::1]:8448"


def test_discover_prefers_matrix_fed_srv_and_keeps_the_server_name_for_tls() -> None:
    network = fake_network(
        NO_WELL_KNOWN,
        srv={"_matrix-fed._tcp.example.org": [SrvRecord(10, 0, 8449, "fed.example.org")],
             "_matrix._tcp.example.org": [SrvRecord(10, 0, 1, "old.example.org")]},
        addresses={"fed.example.org": ["192.0.2.2"]},
    )

    results, endpoints = discover(ServerName("example.org"), network)

    assert results[1].detail == "_matrix-fed._tcp.example.org -> fed.example.org:8449"
    assert endpoints == [Endpoint("192.0.2.2", 8449, "example.org", "example.org")]


def test_discover_falls_back_to_the_deprecated_srv_name_with_a_warning() -> None:
    network = fake_network(
        NO_WELL_KNOWN,
        srv={"_matrix._tcp.example.org": [SrvRecord(10, 0, 8443, "old.example.org")]},
        addresses={"old.example.org": ["192.0.2.3"]},
    )

    results, endpoints = discover(ServerName("example.org"), network)

    assert results[1].status is Status.WARN and "deprecated" in results[1].detail
    assert endpoints[0].port == 8443


def test_discover_with_a_failing_srv_lookup_warns_and_uses_8448() -> None:
    network = fake_network(NO_WELL_KNOWN, srv={"_matrix-fed._tcp.example.org": OSError("timeout")},
                           addresses={"example.org": ["192.0.2.1"]})

    results, endpoints = discover(ServerName("example.org"), network)

    assert results[1].status is Status.WARN
    assert endpoints == [Endpoint("192.0.2.1", 8448, "example.org", "example.org")]


def test_discover_follows_delegation_to_a_host_with_port_without_srv() -> None:
    delegation = HttpAnswer(200, "application/json", b'{"m.server": "matrix.example.org:443"}')
    network = fake_network(delegation, addresses={"matrix.example.org": ["192.0.2.4"]})

    results, endpoints = discover(ServerName("example.org"), network)

    assert results[1].detail == "not used: matrix.example.org:443 has an explicit port"
    assert endpoints == [
        Endpoint("192.0.2.4", 443, "matrix.example.org", "matrix.example.org:443")
    ]


def test_discover_with_unreachable_well_known_warns_and_goes_on() -> None:
    network = fake_network(ssl.SSLCertVerificationError("certificate verify failed"),
                           addresses={"example.org": ["192.0.2.1"]})

    results, endpoints = discover(ServerName("example.org"), network)

    assert results[0].status is Status.WARN and "no delegation" in results[0].detail
    assert len(endpoints) == 1


def test_discover_with_an_explicit_port_skips_well_known_and_srv() -> None:
    network = fake_network(AssertionError("fetched"), addresses={"example.org": ["192.0.2.1"]})

    results, endpoints = discover(ServerName("example.org", 8000), network)

    assert results[0].detail == "not used: example.org:8000 has an explicit port"
    assert endpoints == [Endpoint("192.0.2.1", 8000, "example.org", "example.org:8000")]


def test_discover_of_an_unknown_name_fails_the_dns_check() -> None:
    results, endpoints = discover(ServerName("nowhere.example"), fake_network(NO_WELL_KNOWN))

    assert results[-1].status is Status.FAIL
    assert results[-1].detail == "nowhere.example does not resolve (Name or service not known)"
    assert endpoints == []


@pytest.fixture
def dns_server() -> Iterator[str]:
    with fake_dns_server() as server:
        yield server


def test_lookup_srv_returns_records_by_priority(dns_server: str) -> None:
    records = lookup_srv("_matrix-fed._tcp.example.org", 2, dns_server)

    assert records == [SrvRecord(10, 5, 8448, "fed.example.org"),
                       SrvRecord(20, 0, 8449, "backup.example.org")]


def test_lookup_srv_of_a_missing_name_returns_none(dns_server: str) -> None:
    assert lookup_srv("_matrix._tcp.example.org", 2, dns_server) is None


def test_lookup_srv_of_a_failing_server_raises_oserror(dns_server: str) -> None:
    with pytest.raises(OSError, match="^no DNS server could answer$"):
        lookup_srv("_matrix._tcp.broken.example.org", 2, dns_server)


def test_lookup_srv_without_an_answering_server_raises_oserror_in_time() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        with pytest.raises(OSError, match="no answer from the DNS server within 0.5 s"):
            lookup_srv("_matrix-fed._tcp.example.org", 0.5,
                       f"127.0.0.1:{silent.getsockname()[1]}")
    assert time.monotonic() - started < 3


# -- keys and allow-list (no network) -------------------------------------------------------


def test_judge_keys_passes_a_response_signed_by_the_server() -> None:
    results = judge_keys(signed_keys("b.example.org", int(NOW * 1000) + 3_600_000),
                         "b.example.org", NOW)

    assert [r.status for r in results] == [Status.PASS] * 3
    assert results[1].detail == "valid until 2027-01-15 09:00 UTC (in 1 h)"
    assert results[2].detail == "ed25519:auto signature by b.example.org verifies"


def test_judge_keys_fails_a_tampered_response() -> None:
    body = signed_keys("b.example.org", int(NOW * 1000) + 3_600_000)
    body["valid_until_ts"] += 1

    results = judge_keys(body, "b.example.org", NOW)

    assert results[2].status is Status.FAIL
    assert "ed25519:auto signature does not verify" in results[2].detail


def test_judge_keys_fails_another_server_name_and_an_expired_validity() -> None:
    results = judge_keys(signed_keys("c.example.org", int(NOW * 1000) - 1), "b.example.org", NOW)

    assert [r.status for r in results] == [Status.FAIL, Status.FAIL, Status.PASS]
    assert results[0].detail == "server_name is 'c.example.org', not 'b.example.org'"


def test_judge_keys_fails_without_an_ed25519_key() -> None:
    results = judge_keys({"server_name": "b.example.org", "valid_until_ts": int(NOW * 1000) + 1,
                          "verify_keys": {}}, "b.example.org", NOW)

    assert results[-1].detail == "no ed25519 verify key"


@pytest.mark.parametrize(
    ("whitelist", "status", "words"),
    [
        (None, Status.PASS, "federation is open here"),
        ([], Status.FAIL, "federation is off here"),
        (["b.example.org"], Status.PASS, "is on this server's allow-list"),
        (["c.example.org"], Status.FAIL, "federation allow b.example.org"),
    ],
)
def test_judge_allow_list(whitelist: object, status: Status, words: str) -> None:
    result = judge_allow_list("b.example.org", whitelist)

    assert result.status is status and words in result.detail


# -- real TLS servers on loopback --------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    ca: Path
    certificates: dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a certificate for localhost, one for another name, and a self-signed one."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=Test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    certificates = {}
    for name, san in (("good", "DNS:localhost"), ("wrong", "DNS:wrong.example.test")):
        key, request, crt = (directory / f"{name}.{kind}" for kind in ("key", "csr", "crt"))
        extensions = directory / f"{name}.ext"
        extensions.write_text(f"subjectAltName={san}\nkeyUsage=critical,digitalSignature\n"
                              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(request), "-subj", f"/CN={san[4:]}")
        openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", "2", "-out", str(crt), "-extfile", str(extensions))
        certificates[name] = (crt, key)
    key, crt = directory / "self.key", directory / "self.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost")
    certificates["self"] = (crt, key)
    return Pki(ca, certificates)


@dataclass
class FakeServer:
    """An HTTPS server on 127.0.0.1 answering from `routes`: path -> (status, type, body)."""

    port: int
    routes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)

    def json(self, path: str, value: Any, status: int = 200) -> None:
        self.routes[path] = (status, "application/json", json.dumps(value).encode())


@pytest.fixture
def serve(pki: Pki) -> Iterator[Callable[[str], FakeServer]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(certificate: str) -> FakeServer:
        fake = FakeServer(0)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                status, kind, body = fake.routes.get(self.path, (404, "text/plain", b"no"))
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("Location", body.decode())
                    body = b""
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, pki.certificates[certificate]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        fake.port = server.server_address[1]
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def synapse_like(fake: FakeServer, server_name: str) -> FakeServer:
    valid_until_ts = int(time.time() * 1000) + 86_400_000
    fake.json("/_matrix/key/v2/server", signed_keys(server_name, valid_until_ts))
    fake.json("/_matrix/federation/v1/version", {"server": {"name": "Synapse", "version": "1.2"}})
    return fake


def loopback(pki: Pki) -> Network:
    return Network(timeout=5, cafile=str(pki.ca), resolve=lambda host, port: ["127.0.0.1"])


def test_check_of_a_good_server_passes_every_line(
    serve: Callable[[str], FakeServer], pki: Pki
) -> None:
    fake = serve("good")
    name = f"localhost:{fake.port}"
    synapse_like(fake, name)

    results = run_check(parse_server_name(name), loopback(pki),
                        lambda server: judge_allow_list(server, [name]))

    lines = [r.line() for r in results]
    assert [r.status for r in results] == [Status.PASS] * 8, lines
    assert lines[2].startswith(f"✓ 127.0.0.1:{fake.port} tls: certificate valid for localhost, "
                               "issued by Test CA, until ")
    assert lines[6] == f"✓ 127.0.0.1:{fake.port} version: federation API answers: Synapse 1.2"


def test_check_of_a_self_signed_server_says_self_signed(
    serve: Callable[[str], FakeServer], pki: Pki
) -> None:
    fake = serve("self")
    name = f"localhost:{fake.port}"
    synapse_like(fake, name)

    results = run_check(parse_server_name(name), loopback(pki))

    tls = next(r for r in results if r.name == "tls")
    assert tls.status is Status.FAIL
    assert tls.detail.startswith("self-signed certificate (localhost): other servers refuse it")
    # The keys are still judged, over the untrusted connection, to show the rest.
    assert [r.status for r in results if r.name == "keys"] == [Status.PASS] * 3


def test_check_of_a_server_with_a_certificate_for_another_name_fails_clearly(
    serve: Callable[[str], FakeServer], pki: Pki
) -> None:
    fake = synapse_like(serve("wrong"), "wrong.example.test")
    name = f"localhost:{fake.port}"

    results = run_check(parse_server_name(name), loopback(pki))

    failed = [r.line() for r in results if r.status is Status.FAIL]
    assert failed == [
        f"✗ 127.0.0.1:{fake.port} tls: not valid for localhost: the certificate names "
        "wrong.example.test",
        f"✗ 127.0.0.1:{fake.port} keys: server_name is 'wrong.example.test', not '{name}'",
    ]


def test_check_of_a_closed_port_fails_to_connect_and_stops_there(pki: Pki) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = run_check(parse_server_name(f"localhost:{port}"), loopback(pki))

    assert results[-1].line() == f"✗ 127.0.0.1:{port} tls: cannot connect (Connection refused)"


def test_check_of_a_server_without_federation_api_fails_the_version_line(
    serve: Callable[[str], FakeServer], pki: Pki
) -> None:
    fake = serve("good")
    name = f"localhost:{fake.port}"
    fake.json("/_matrix/key/v2/server", signed_keys(name, int(time.time() * 1000) + 60_000))

    results = run_check(parse_server_name(name), loopback(pki))

    assert results[-1].status is Status.FAIL
    assert results[-1].detail == ("/_matrix/federation/v1/version answered HTTP 404 without a "
                                  "server name and version")


def test_fetch_url_follows_redirects_and_reads_at_most_50_kib_and_a_byte(
    serve: Callable[[str], FakeServer], pki: Pki
) -> None:
    fake = serve("good")
    target = f"https://localhost:{fake.port}/big"
    fake.routes["/.well-known/matrix/server"] = (302, "text/plain", target.encode())
    fake.routes["/big"] = (200, "application/json", b" " * (2 * WELL_KNOWN_MAX_BYTES))

    answer = fetch_url(f"https://localhost:{fake.port}/.well-known/matrix/server", 5, str(pki.ca))

    assert (answer.status, answer.redirected_to) == (200, target)
    assert len(answer.body) == WELL_KNOWN_MAX_BYTES + 1


def test_fetch_url_refuses_a_certificate_the_trust_store_does_not_hold(
    serve: Callable[[str], FakeServer], pki: Pki
) -> None:
    import urllib.error

    fake = serve("self")

    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_url(f"https://localhost:{fake.port}/", 5, str(pki.ca))
