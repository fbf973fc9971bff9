"""The serving path: h2, JSON compressed once by Apache, Element precompressed and cached right.

One booted stack with a fake Element release whose bundles are real-looking text; the tests
read what a browser would get.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.element_release import TestKey, entry, publish, release_members, serving
from tests.system import stack
from tests.system.stack import SERVER, https, install, set_stack_value
from tests.system.testbed import Container, Response

pytestmark = pytest.mark.system

ELEMENT = f"element.{SERVER}"
VERSION = "1.5.0"
BUNDLE = "/bundles/0123abcd/app.js"
# Compressible, like a JavaScript bundle, and far above the 512-byte threshold.
SCRIPT = "".join(
    f"function handler{index}(event) {{ return dispatch('m.room.message', event, {index}); }}\n"
    for index in range(400)
).encode()


@pytest.fixture(scope="module")
def ct(base_tarball: Path, deb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    Container
]:
    with TestKey.generate("Serving Test Releases") as key, \
            Container(base_tarball, name="serving", hostname=SERVER) as container:
        container.boot()
        install(container, deb_path)
        stack.wait_for_client_api(container)
        mirror_dir = tmp_path_factory.mktemp("serving-mirror")
        (mirror_dir / "key.asc").write_bytes(key.public())
        top = f"element-v{VERSION}"
        members = release_members(VERSION) + [
            entry(f"{top}/bundles/0123abcd/", kind=tarfile.DIRTYPE),
            entry(f"{top}{BUNDLE}", SCRIPT),
        ]
        with serving(mirror_dir) as mirror:
            publish(mirror_dir, key, VERSION, members)
            set_stack_value(container, "element_source", f"{mirror.url}element-v{{version}}.tar.gz")
            set_stack_value(container, "element_key_url", f"{mirror.url}key.asc")
            set_stack_value(container, "element_key_fingerprint", f'"{key.fingerprint}"')
            container.run(["matrix-stack-admin", "element", "fetch", VERSION])
        yield container


def element(ct: Container, path: str, encoding: str | None) -> Response:
    headers = {"Accept-Encoding": encoding} if encoding else {}
    return https(ct, path, server_name=ELEMENT, headers=headers)


def test_bundles_were_compressed_once_at_install(ct: Container) -> None:
    current = "/var/lib/matrix-stack/element/current"
    assert gzip.decompress(ct.read_bytes(f"{current}{BUNDLE}.gz")) == SCRIPT
    import brotli

    assert brotli.decompress(ct.read_bytes(f"{current}{BUNDLE}.br")) == SCRIPT


@pytest.mark.parametrize(("accept", "encoding"), [("br, gzip", "br"), ("gzip", "gzip"),
                                                  (None, None)])
def test_bundle_is_served_precompressed_by_content_negotiation(
    ct: Container, accept: str | None, encoding: str | None
) -> None:
    import brotli

    response = element(ct, BUNDLE, accept)
    assert response.status == 200
    assert response.headers.get("content-encoding") == encoding
    assert response.headers["content-type"].startswith("text/javascript")
    assert "Accept-Encoding" in response.headers["vary"]
    decode = {"br": brotli.decompress, "gzip": gzip.decompress, None: lambda data: data}
    assert decode[encoding](response.body) == SCRIPT
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize("path", ["/", "/index.html", "/config.json", "/version"])
def test_entry_points_are_revalidated(ct: Container, path: str) -> None:
    response = element(ct, path, "gzip")
    assert response.status == 200
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("port", [443, 8448])
def test_http2_is_negotiated(ct: Container, port: int) -> None:
    context = ssl.create_default_context(cafile=str(ct.path(stack.SELF_SIGNED_CERT)))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=SERVER) as tls:
        assert tls.selected_alpn_protocol() == "h2"


def test_synapse_json_is_compressed_by_apache_not_by_synapse(ct: Container) -> None:
    response = https(ct, "/_matrix/client/versions", headers={"Accept-Encoding": "gzip"})
    assert response.headers.get("content-encoding") == "gzip"
    assert "versions" in json.loads(gzip.decompress(response.body))
    direct = ct.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip",
                     "http://127.0.0.1:8008/_matrix/client/versions"]).stdout.lower()
    assert "content-encoding" not in direct


def closed_connections_to_synapse(ct: Container) -> int:
    """Count the connections to Synapse closed in the last minute (TIME-WAIT, either end)."""
    command = "ss -Htan state time-wait '( dport = :8008 or sport = :8008 )' | wc -l"
    return int(ct.run(["sh", "-c", command]).stdout)


def test_apache_reuses_its_connections_to_synapse(ct: Container) -> None:
    context = ssl.create_default_context(cafile=str(ct.path(stack.SELF_SIGNED_CERT)))
    before = closed_connections_to_synapse(ct)
    with stack.host_resolves(SERVER):
        connection = http.client.HTTPSConnection(SERVER, 443, context=context, timeout=10)
        try:
            for _ in range(50):
                connection.request("GET", "/_matrix/client/versions")
                response = connection.getresponse()
                response.read()
                assert response.status == 200
        finally:
            connection.close()
    # Without the pool, each of the 50 requests would leave one closed connection behind.
    assert closed_connections_to_synapse(ct) - before < 5


def test_doctor_passes_on_this_healthy_stack(ct: Container) -> None:
    status, checks = stack.doctor(ct)
    assert status == 0, [check for check in checks.values() if not check["ok"]]
    assert checks["element"]["detail"] == f"{VERSION} served (latest configured)"


def test_doctor_names_a_hand_edited_file(ct: Container) -> None:
    path = "/etc/matrix-stack/element/config.json"
    original = ct.read_file(path)
    ct.write_file(path, original.replace('"brand": "Element"', '"brand": "Our chat"'))
    try:
        status, checks = stack.doctor(ct)
        assert status == 0  # an admin's edit is theirs: a warning, not a failure
        check = checks[f"file {path}"]
        assert check["warning"] is True and check["detail"] == "edited locally (kept by ucf)"
    finally:
        ct.write_file(path, original)


def test_doctor_fails_on_an_expired_certificate(ct: Container) -> None:
    ct.run(["mkdir", "-p", "/etc/ssl/expired"])
    ct.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={SERVER}",
            "-addext", f"subjectAltName=DNS:{SERVER},DNS:{ELEMENT}",
            "-not_before", "20200101000000Z", "-not_after", "20200201000000Z",
            "-keyout", "/etc/ssl/expired/key.pem", "-out", "/etc/ssl/expired/cert.pem"])
    set_stack_value(ct, "tls", "files")
    set_stack_value(ct, "tls_cert", "/etc/ssl/expired/cert.pem")
    set_stack_value(ct, "tls_key", "/etc/ssl/expired/key.pem")
    ct.run(["matrix-stack-admin", "apply"])
    try:
        status, checks = stack.doctor(ct)
        assert status == 1
        assert checks["certificate"]["ok"] is False
        assert str(checks["certificate"]["detail"]).startswith("expired on Feb  1 00:00:00 2020")
    finally:
        set_stack_value(ct, "tls", "self-signed")
        set_stack_value(ct, "tls_cert", "''")
        set_stack_value(ct, "tls_key", "''")
        ct.run(["matrix-stack-admin", "apply"])
