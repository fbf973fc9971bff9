"""A preseeded install honours every answer; the TLS modes files and acme; behind a proxy.

Also: a noninteractive install with an invalid answer fails in one line and creates nothing.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import stack
from tests.system.stack import https, install, preseed, set_stack_value
from tests.system.testbed import Container, http_request

pytestmark = pytest.mark.system

SERVER = "chat.example.test"
ELEMENT = "web.example.test"
TURN = "turn.example.test"
CERT = "/etc/ssl/matrix-test/fullchain.pem"
KEY = "/etc/ssl/matrix-test/privkey.pem"
ANSWERS = {
    "server-name": SERVER,
    "element-domain": ELEMENT,
    "element-version": "1.11.90",
    "element-source": "file:///srv/element/element-v{version}.tar.gz",
    "tls": "files",
    "tls-cert": CERT,
    "tls-key": KEY,
    "turn-enable": "true",
    "turn-domain": TURN,
    "turn-external-ip": "198.51.100.7",
    "turn-listening-ip": "",
    "federation": "open",
    "federation-domains": "",
    "registration": "token",
    "behind-proxy": "false",
}


@pytest.fixture(scope="module")
def booted(base_tarball: Path) -> Iterator[Container]:
    container = Container(base_tarball, name="preseed", hostname=SERVER)
    try:
        container.boot()
        yield container
    finally:
        container.close()


def make_certificate(container: Container) -> None:
    container.run(["mkdir", "-p", "/etc/ssl/matrix-test"])
    container.run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", f"/CN={SERVER}",
        "-addext", f"subjectAltName=DNS:{SERVER},DNS:{ELEMENT},DNS:{TURN}",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-keyout", KEY, "-out", CERT,
    ])


def test_invalid_preseeded_answer_fails_in_one_line_and_creates_nothing(
    booted: Container, deb_path: Path
) -> None:
    preseed(booted, {"server-name": "Not A Name!"})
    result = install(booted, deb_path, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr  # apt passes dpkg's output on its stdout
    ours = [line for line in output.splitlines() if line.startswith("matrix-stack:")]
    assert ours == [
        "matrix-stack: matrix-stack/server-name: 'Not A Name!' is not a DNS name (letters, "
        "digits and hyphens in dot-separated labels); change it with: dpkg-reconfigure "
        "matrix-stack"
    ]
    for path in ("/etc/matrix-stack", "/etc/matrix-synapse/conf.d/50-matrix-stack.yaml",
                 "/etc/apache2/sites-available/matrix-stack.conf"):
        assert not booted.path(path).exists(), path


@pytest.fixture(scope="module")
def ct(booted: Container, deb_path: Path) -> Container:
    """matrix-stack configured from a full preseed (after the failed attempt above)."""
    make_certificate(booted)
    preseed(booted, ANSWERS)
    booted.run(["dpkg", "--configure", "-a"], timeout=900)
    stack.wait_for_client_api(booted, SERVER, cafile=CERT)
    return booted


def test_every_preseeded_answer_is_kept_in_stack_yaml(ct: Container) -> None:
    text = stack.read_stack(ct)
    for question, value in ANSWERS.items():
        key = question.replace("-", "_")
        if value in ("true", "false"):
            assert f"{key}: {value}\n" in text
        elif value:
            assert f"{key}: {value}\n" in text or f"{key}: '{value}'\n" in text, key


def test_admin_certificate_is_served_on_every_https_port(ct: Container) -> None:
    expected = hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(ct.read_file(CERT))
    ).hexdigest()
    for port, name in ((443, SERVER), (443, ELEMENT), (8448, SERVER)):
        response = https(ct, "/", port=port, server_name=name, cafile=CERT)
        assert hashlib.sha256(response.peer_cert_der).hexdigest() == expected
    assert not ct.path("/etc/matrix-stack/tls/self-signed.crt").exists()


def test_token_registration_is_offered(ct: Container) -> None:
    response = https(ct, "/_matrix/client/v3/register", server_name=SERVER, cafile=CERT,
                     method="POST", body={})
    flows = response.json()["flows"]
    assert any("m.login.registration_token" in flow["stages"] for flow in flows)


def test_open_federation_trusts_matrix_org_and_has_no_allow_list(ct: Container) -> None:
    import yaml

    conf = yaml.safe_load(ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml"))
    assert "federation_domain_whitelist" not in conf
    assert conf["trusted_key_servers"] == [{"server_name": "matrix.org"}]
    element = json.loads(ct.read_file("/etc/matrix-stack/element/config.json"))
    assert element["default_federate"] is True
    assert element["default_server_config"]["m.homeserver"]["base_url"] == f"https://{SERVER}"


def test_element_domain_has_its_own_vhost_with_the_config(ct: Container) -> None:
    response = https(ct, "/config.json", server_name=ELEMENT, cafile=CERT)
    assert response.status == 200
    assert response.json()["default_server_config"]["m.homeserver"]["server_name"] == SERVER
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    # The homeserver's own name does not serve Element's config.
    assert https(ct, "/config.json", server_name=SERVER, cafile=CERT).status == 404


def test_turn_uses_the_preseeded_domain_address_and_certificate(ct: Container) -> None:
    conf = ct.read_file("/etc/matrix-stack/turnserver.conf")
    assert f"realm={TURN}\n" in conf
    assert "external-ip=198.51.100.7\n" in conf
    assert f"cert={CERT}\n" in conf
    assert "allowed-peer-ip=198.51.100.7\n" in conf
    synapse = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
    assert f'"turns:{TURN}:5349?transport=tcp"' in synapse
    journal = ct.journal("coturn", lines=400)
    assert f"Default realm: {TURN}" in journal or "realm" in journal


def test_acme_mode_passes_configtest_with_mod_md(ct: Container) -> None:
    set_stack_value(ct, "tls", "acme")
    set_stack_value(ct, "acme_email", "admin@example.test")
    result = ct.run(["matrix-stack-admin", "apply"])
    assert "updated /etc/apache2/sites-available/matrix-stack.conf" in result.stdout
    site = ct.read_file("/etc/apache2/sites-available/matrix-stack.conf")
    assert f"MDomain {SERVER} {ELEMENT} {TURN}\n" in site
    assert "MDContactEmail admin@example.test\n" in site
    assert "MDCertificateAgreement accepted\n" in site
    assert "SSLCertificateFile" not in site
    ct.run(["apache2ctl", "configtest"])
    modules = ct.run(["apache2ctl", "-M"]).stdout
    assert "md_module" in modules
    state = ct.run(["systemctl", "is-active", "apache2"], check=False).stdout.strip()
    assert state == "active", ct.run(["tail", "-n", "20", "/var/log/apache2/error.log"]).stdout
    # Until Let's Encrypt answers (never, here), mod_md completes TLS with a fallback
    # certificate and answers 503 on the managed vhosts.
    response = https(ct, "/_matrix/client/versions", server_name=SERVER, cafile=None)
    assert response.status == 503
    assert response.tls_version in ("TLSv1.2", "TLSv1.3")


def test_behind_proxy_serves_plain_http_to_the_proxy_only(ct: Container) -> None:
    set_stack_value(ct, "behind_proxy", "true")
    ct.run(["matrix-stack-admin", "apply"])
    response = http_request("GET", "127.0.0.1", 80, "/_matrix/client/versions", server_name=SERVER)
    assert response.status == 200
    well_known = http_request("GET", "127.0.0.1", 80, "/.well-known/matrix/server",
                              server_name=SERVER)
    assert well_known.json() == {"m.server": f"{SERVER}:443"}
    assert "SSLEngine" not in ct.read_file("/etc/apache2/sites-available/matrix-stack.conf")
    # Only the proxy (loopback by default) may connect.
    set_stack_value(ct, "proxy_addresses", "[192.0.2.1]")
    ct.run(["matrix-stack-admin", "apply"])
    refused = http_request("GET", "127.0.0.1", 80, "/_matrix/client/versions", server_name=SERVER)
    assert refused.status == 403
