"""proxy-config: Traefik and HAProxy configurations for this stack behind an outside proxy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from matrix_stack.base.errors import UsageError
from matrix_stack.cli.main import build_parser
from matrix_stack.cli.proxy_config import (
    check_backend,
    default_backend,
    render_proxy_config,
    run_proxy_config,
)
from matrix_stack.core.host import default_route_address
from tests.unit.helpers import make_settings

BEHIND = {"behind_proxy": True, "proxy_addresses": ["192.0.2.10"]}


def test_traefik_config_is_yaml_routing_both_names_and_federation_to_apache() -> None:
    settings = make_settings(element_domain="chat.example.org", **BEHIND)

    config = yaml.safe_load(render_proxy_config(settings, "traefik", "10.0.0.5:80"))

    routers = config["http"]["routers"]
    assert routers["matrix-stack"] == {
        "rule": "Host(`matrix.example.org`) || Host(`chat.example.org`)",
        "entryPoints": ["websecure"],
        "service": "matrix-stack",
        "tls": {},
    }
    assert routers["matrix-stack-federation"] == {
        "rule": "Host(`matrix.example.org`) && PathPrefix(`/_matrix`)",
        "entryPoints": ["matrix-federation"],
        "service": "matrix-stack",
        "tls": {},
    }
    assert config["http"]["services"]["matrix-stack"]["loadBalancer"] == {
        "passHostHeader": True, "servers": [{"url": "http://10.0.0.5:80"}],
    }


def test_traefik_config_names_the_entry_points_ports_and_encoded_slashes() -> None:
    text = render_proxy_config(make_settings(**BEHIND), "traefik", "10.0.0.5:80")

    assert '#       address: ":443"' in text and '#       address: ":8448"' in text
    assert text.count("allowEncodedSlash: true") == 2
    assert "192.0.2.10/32" in text


def test_traefik_config_with_element_on_the_server_name_has_one_host() -> None:
    settings = make_settings(element_domain="matrix.example.org", **BEHIND)

    config = yaml.safe_load(render_proxy_config(settings, "traefik", "127.0.0.1:80"))

    assert config["http"]["routers"]["matrix-stack"]["rule"] == "Host(`matrix.example.org`)"


def haproxy_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.strip())
    return sections


def test_haproxy_config_terminates_tls_with_h2_on_443_and_8448_and_forwards() -> None:
    text = render_proxy_config(make_settings(**BEHIND), "haproxy", "10.0.0.5:80")

    sections = haproxy_sections(text)
    assert set(sections) == {"frontend matrix-stack", "backend matrix-stack"}
    frontend = sections["frontend matrix-stack"]
    assert [line for line in frontend if line.startswith("bind")] == [
        "bind :::443 v4v6 ssl crt /etc/haproxy/certs/ alpn h2,http/1.1",
        "bind :::8448 v4v6 ssl crt /etc/haproxy/certs/ alpn h2,http/1.1",
    ]
    assert frontend.index("http-request del-header X-Forwarded-For") < frontend.index(
        "option forwardfor")
    assert "http-request set-header X-Forwarded-Proto https" in frontend
    assert ("acl matrix_stack_host hdr(host),field(1,:) -i matrix.example.org "
            "element.matrix.example.org") in frontend
    assert "http-request deny if federation_port !matrix_path" in frontend
    assert sections["backend matrix-stack"][-1] == "server apache 10.0.0.5:80 check"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    certificates = tmp_path / "certs"
    certificates.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(certificates / "k"), "-out", str(certificates / "c"),
         "-subj", "/CN=matrix.example.org", "-days", "1"],
        check=True, capture_output=True,
    )
    pem = (certificates / "c").read_text() + (certificates / "k").read_text()
    for name in ("c", "k"):
        (certificates / name).unlink()
    (certificates / "matrix.pem").write_text(pem)
    text = render_proxy_config(make_settings(**BEHIND), "haproxy", "10.0.0.5:80")
    config = tmp_path / "haproxy.cfg"
    config.write_text("defaults\n    timeout connect 5s\n"
                      + text.replace("/etc/haproxy/certs/", f"{certificates}/"))

    result = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


def test_turn_ports_are_mentioned_only_when_turn_is_enabled() -> None:
    with_turn = render_proxy_config(make_settings(**BEHIND), "haproxy", "10.0.0.5:80")
    without = render_proxy_config(make_settings(turn_enable=False, **BEHIND), "haproxy",
                                  "10.0.0.5:80")

    assert "coturn is not proxied" in with_turn and "coturn" not in without


def test_default_backend_is_loopback_for_a_proxy_on_this_host() -> None:
    settings = make_settings(behind_proxy=True)

    assert default_backend(settings) == "127.0.0.1:80"


@pytest.mark.skipif(not default_route_address(), reason="this host has no default route")
def test_default_backend_for_an_outside_proxy_is_an_address_of_this_host() -> None:
    backend = default_backend(make_settings(**BEHIND))

    assert re.fullmatch(r"[0-9.]+:80", backend)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10.0.0.5", "10.0.0.5:80"), ("web.internal:8080", "web.internal:8080"),
     ("[2001:db8::5]", "[2001:db8::5]:80"), ("[2001:db8::5]:81", "[2001:db8::5]:81")],
)
def test_check_backend_adds_port_80(value: str, expected: str) -> None:
    assert check_backend(value) == expected


@pytest.mark.parametrize("value", ["10.0.0.5:0", "bad name", "[nope]:80", "10.0.0.5:http"])
def test_check_backend_refuses_what_is_not_host_and_port(value: str) -> None:
    with pytest.raises(UsageError):
        check_backend(value)


def test_proxy_config_command_parses_proxy_and_backend() -> None:
    arguments = build_parser().parse_args(["proxy-config", "haproxy", "--backend", "10.0.0.5"])

    assert (arguments.handler, arguments.proxy, arguments.backend) == (
        run_proxy_config, "haproxy", "10.0.0.5")


def test_proxy_config_command_refuses_another_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["proxy-config", "nginx"])

    assert caught.value.code == 2
