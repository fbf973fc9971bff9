"""render: every generated file, compared byte for byte with golden files.

Golden files live in tests/data/<case>/<target path with / replaced by __>, for instance
tests/data/defaults/etc__apache2__sites-available__matrix-stack.conf. After an intended
change to a template or to render.py, rewrite them with

    UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_render.py

and read the diff (git diff tests/data) before committing it: the golden files are the
review copy of what lands on the administrator's disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_stack.base.files import FileSpec
from matrix_stack.base.paths import (
    APACHE_SITE_PATH,
    ELEMENT_CONFIG_PATH,
    GENERATED_FILES,
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    WELL_KNOWN_DIR,
)
from matrix_stack.base.secrets import Secrets
from matrix_stack.core import postgres
from matrix_stack.core.host import Facts
from matrix_stack.core.render import (
    allowed_peers,
    denied_ranges,
    render_all,
)
from matrix_stack.core.settings import Settings, from_mapping

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SECRET = "test-turn-secret"
MAIL_PASSWORD = "test-mail-password"
SECRETS = Secrets(turn_shared_secret=SECRET, mail_relay_password=MAIL_PASSWORD)
DEFAULT_FACTS = Facts(listening_ip="203.0.113.10", external_ip="203.0.113.10")
NAT_FACTS = Facts(listening_ip="10.0.0.7", external_ip="198.51.100.7/10.0.0.7")
SERVER_WELL_KNOWN = WELL_KNOWN_DIR / "matrix" / "server"
CLIENT_WELL_KNOWN = WELL_KNOWN_DIR / "matrix" / "client"


def tls_root(root: Path) -> Path:
    for name in ("matrix.pem", "matrix.key"):
        path = root / "etc/ssl/private" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n")
    return root


def case_settings(case: str, root: Path) -> tuple[Settings, Facts]:
    """Return the settings and host facts of one golden case."""
    raw: dict[str, Any] = {"server_name": "matrix.example.org"}
    facts = DEFAULT_FACTS
    if case == "full":
        raw = {
            "server_name": "example.org",
            "element_domain": "chat.example.org",
            "element_version": "1.11.90",
            "tls": "files",
            "tls_cert": "/etc/ssl/private/matrix.pem",
            "tls_key": "/etc/ssl/private/matrix.key",
            "turn_domain": "turn.example.org",
            "turn_external_ip": "198.51.100.7/10.0.0.7",
            "turn_listening_ip": "10.0.0.7",
            "federation": "open",
            "registration": "token",
            "database": "postgresql",
        }
        facts = NAT_FACTS
        tls_root(root)
    elif case == "acme":
        raw.update(tls="acme", acme_email="admin@example.org", turn_domain="turn.example.org")
    elif case == "behind-proxy":
        raw.update(
            element_domain="matrix.example.org",
            behind_proxy=True,
            proxy_addresses=["192.0.2.10", "2001:db8::10"],
            federation="off",
            registration="open",
            turn_enable=False,
        )
    elif case == "mail-local":
        raw.update(mail="local", registration="open", admin_email="admin@matrix.example.org")
    elif case == "mail-relay":
        raw.update(
            mail="relay",
            mail_from="Chat <chat@example.org>",
            mail_relay_host="smtp.example.org",
            mail_relay_user="matrix@example.org",
            mail_password_reset=False,
        )
    else:
        assert case == "defaults"
    return from_mapping(raw, root), facts


CASES = ["defaults", "full", "acme", "behind-proxy", "mail-local", "mail-relay"]
Renders = dict[str, dict[Path, FileSpec]]
ALL_PATHS = [
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    APACHE_SITE_PATH,
    ELEMENT_CONFIG_PATH,
    SERVER_WELL_KNOWN,
    CLIENT_WELL_KNOWN,
]


def golden_path(case: str, target: Path) -> Path:
    return DATA_DIR / case / str(target).lstrip("/").replace("/", "__")


def render_case(case: str, root: Path) -> dict[Path, FileSpec]:
    settings, facts = case_settings(case, root)
    return {spec.path: spec for spec in render_all(settings, SECRETS, facts)}


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> Renders:
    """Return every case's rendered files by target path, rendered once per module."""
    root = tmp_path_factory.mktemp("render")
    return {case: render_case(case, root) for case in CASES}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("target", ALL_PATHS, ids=lambda path: path.name)
def test_render_all_matches_golden_file(renders: Renders, case: str, target: Path) -> None:
    rendered = renders[case][target].text
    golden = golden_path(case, target)
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered, encoding="utf-8")

    assert rendered == golden.read_text(encoding="utf-8")


def test_golden_directory_holds_exactly_the_rendered_files() -> None:
    for case in CASES:
        assert sorted(path.name for path in (DATA_DIR / case).iterdir()) == sorted(
            golden_path(case, target).name for target in ALL_PATHS
        )


@pytest.mark.parametrize("case", CASES)
def test_render_all_gives_each_file_its_owner_and_mode(renders: Renders, case: str) -> None:
    specs = renders[case]

    assert [(spec.path, oct(spec.mode), spec.owner, spec.group) for spec in specs.values()] == [
        (SYNAPSE_CONF_PATH, "0o600", "matrix-synapse", "root"),
        (TURNSERVER_CONF_PATH, "0o640", "root", "turnserver"),
        (APACHE_SITE_PATH, "0o644", "root", "root"),
        (ELEMENT_CONFIG_PATH, "0o644", "root", "root"),
        (SERVER_WELL_KNOWN, "0o644", "root", "root"),
        (CLIENT_WELL_KNOWN, "0o644", "root", "root"),
    ]


@pytest.mark.parametrize("case", CASES)
def test_rendered_yaml_and_json_parse(renders: Renders, case: str) -> None:
    specs = renders[case]

    assert isinstance(yaml.safe_load(specs[SYNAPSE_CONF_PATH].text), dict)
    for target in (ELEMENT_CONFIG_PATH, SERVER_WELL_KNOWN, CLIENT_WELL_KNOWN):
        assert isinstance(json.loads(specs[target].text), dict)


@pytest.mark.parametrize("case", CASES)
def test_rendered_apache_site_has_balanced_sections(renders: Renders, case: str) -> None:
    text = renders[case][APACHE_SITE_PATH].text
    stack: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if opening := re.fullmatch(r"<(\w+)(\s[^>]*)?>", line):
            stack.append(opening.group(1))
        elif closing := re.fullmatch(r"</(\w+)>", line):
            assert stack.pop() == closing.group(1)

    assert stack == []


@pytest.mark.parametrize("case", CASES)
def test_render_all_is_pure_and_repeatable(
    tmp_path: Path, case: str, renders: Renders
) -> None:
    assert render_case(case, tmp_path) == renders[case]


# --- Synapse ------------------------------------------------------------------------------


def synapse_config(root: Path, **raw: Any) -> dict[str, Any]:
    settings = from_mapping({"server_name": "matrix.example.org", **raw}, root)
    specs = {spec.path: spec for spec in render_all(settings, SECRETS, DEFAULT_FACTS)}
    config = yaml.safe_load(specs[SYNAPSE_CONF_PATH].text)
    assert isinstance(config, dict)
    return config


def test_render_synapse_with_federation_off_sets_empty_whitelist(tmp_path: Path) -> None:
    config = synapse_config(tmp_path, federation="off", federation_domains="example.com")

    assert config["federation_domain_whitelist"] == []
    assert config["trusted_key_servers"] == []
    assert "suppress_key_server_warning" not in config


def test_render_synapse_with_allow_list_lists_the_domains(tmp_path: Path) -> None:
    config = synapse_config(
        tmp_path, federation="allow-list", federation_domains="example.com matrix.example.net:8448"
    )

    assert config["federation_domain_whitelist"] == ["example.com", "matrix.example.net:8448"]
    assert config["trusted_key_servers"] == []


def test_render_synapse_with_federation_open_has_no_whitelist_and_matrix_org_keys(
    tmp_path: Path,
) -> None:
    config = synapse_config(tmp_path, federation="open", federation_domains="example.com")

    assert "federation_domain_whitelist" not in config
    assert config["trusted_key_servers"] == [{"server_name": "matrix.org"}]
    assert config["suppress_key_server_warning"] is True


def test_render_synapse_with_turn_disabled_has_no_turn_uris_nor_secret(tmp_path: Path) -> None:
    config = synapse_config(tmp_path, turn_enable=False)

    assert config["turn_uris"] == []
    assert "turn_shared_secret_path" not in config


def test_render_synapse_with_turn_lists_udp_tcp_and_tls_uris(tmp_path: Path) -> None:
    config = synapse_config(tmp_path, turn_domain="turn.example.org")

    assert config["turn_uris"] == [
        "turn:turn.example.org?transport=udp",
        "turn:turn.example.org?transport=tcp",
        "turns:turn.example.org:5349?transport=tcp",
    ]
    assert config["turn_shared_secret_path"] == "/etc/matrix-stack/secrets/turn_shared_secret"
    assert config["turn_allow_guests"] is False


@pytest.mark.parametrize(
    ("registration", "expected"),
    [
        ("disabled", {"enable_registration": False}),
        ("token", {"enable_registration": True, "registration_requires_token": True}),
        ("open", {"enable_registration": True, "enable_registration_without_verification": True}),
    ],
)
def test_render_synapse_registration_keys(
    tmp_path: Path, registration: str, expected: dict[str, bool]
) -> None:
    config = synapse_config(tmp_path, registration=registration)
    keys = {"enable_registration", "registration_requires_token",
            "enable_registration_without_verification"}

    assert {key: value for key, value in config.items() if key in keys} == expected


def test_render_synapse_listens_on_loopback_8008_only_behind_x_forwarded(tmp_path: Path) -> None:
    config = synapse_config(tmp_path)

    assert config["listeners"] == [
        {
            "port": 8008,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": True,
            "resources": [{"names": ["client", "federation"], "compress": False}],
        }
    ]
    assert config["public_baseurl"] == "https://matrix.example.org/"
    assert config["registration_shared_secret_path"] == (
        "/etc/matrix-stack/secrets/registration_shared_secret"
    )


# --- Apache -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_render_apache_never_proxies_synapse_admin(renders: Renders, case: str) -> None:
    text = renders[case][APACHE_SITE_PATH].text
    proxied = re.findall(r"^\s*ProxyPass(?:Reverse)?\s+(\S+)\s", text, flags=re.MULTILINE)

    assert proxied
    assert set(proxied) == {"/_matrix", "/_synapse/client"}
    assert "/_synapse/admin" not in re.sub(r"^\s*#.*$", "", text, flags=re.MULTILINE)


def test_render_apache_behind_proxy_admits_only_the_proxy_connection(renders: Renders) -> None:
    text = renders["behind-proxy"][APACHE_SITE_PATH].text

    assert re.findall(r"^\s*Require ip", text, flags=re.MULTILINE) == []
    assert re.findall(r"^\s*Require expr (.*)$", text, flags=re.MULTILINE) == [
        "\"%{CONN_REMOTE_ADDR} -ipmatch '192.0.2.10/32'\"",
        "\"%{CONN_REMOTE_ADDR} -ipmatch '2001:db8::10/128'\"",
    ]
    assert "Listen 8448" not in text
    assert "SSLEngine" not in text


def test_render_apache_acme_lists_every_certificate_name_for_mod_md(renders: Renders) -> None:
    text = renders["acme"][APACHE_SITE_PATH].text

    assert "MDomain matrix.example.org element.matrix.example.org turn.example.org\n" in text
    assert "MDContactEmail admin@example.org\n" in text
    assert "SSLCertificateFile" not in text


# --- well-known, Element ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "server"),
    [("defaults", "matrix.example.org:8448"), ("full", "example.org:8448"),
     ("behind-proxy", "matrix.example.org:443")],
)
def test_render_well_known_server_names_the_federation_port(
    renders: Renders, case: str, server: str
) -> None:
    specs = renders[case]

    assert json.loads(specs[SERVER_WELL_KNOWN].text) == {"m.server": server}
    assert json.loads(specs[CLIENT_WELL_KNOWN].text) == {
        "m.homeserver": {"base_url": f"https://{server.split(':')[0]}"}
    }


@pytest.mark.parametrize(
    ("raw", "federate", "registration"),
    [({}, True, False), ({"federation": "off"}, False, False),
     ({"registration": "token"}, True, True)],
)
def test_render_element_config_follows_federation_and_registration(
    tmp_path: Path, raw: dict[str, str], federate: bool, registration: bool
) -> None:
    settings = from_mapping({"server_name": "matrix.example.org", **raw}, tmp_path)
    specs = {spec.path: spec for spec in render_all(settings, SECRETS, DEFAULT_FACTS)}
    config = json.loads(specs[ELEMENT_CONFIG_PATH].text)

    assert config["default_federate"] is federate
    assert config["setting_defaults"]["UIFeature.registration"] is registration
    assert config["default_server_config"] == {
        "m.homeserver": {"base_url": "https://matrix.example.org",
                         "server_name": "matrix.example.org"}
    }


# --- coturn -------------------------------------------------------------------------------


def test_denied_ranges_cover_private_v4_and_unique_local_v6() -> None:
    ranges = denied_ranges()

    assert ("10.0.0.0", "10.255.255.255") in ranges
    assert ("172.16.0.0", "172.31.255.255") in ranges
    assert ("192.168.0.0", "192.168.255.255") in ranges
    assert ("127.0.0.0", "127.255.255.255") in ranges
    assert ("::1", "::1") in ranges
    assert ("fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") in ranges
    assert ("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff") in ranges


def test_render_turnserver_denies_each_range_as_first_last(renders: Renders) -> None:
    text = renders["defaults"][TURNSERVER_CONF_PATH].text

    assert "denied-peer-ip=10.0.0.0-10.255.255.255\n" in text
    assert "denied-peer-ip=fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\n" in text
    assert len(re.findall(r"^denied-peer-ip=", text, flags=re.MULTILINE)) == len(denied_ranges())


def test_render_turnserver_behind_nat_announces_public_and_allows_own_addresses(
    renders: Renders,
) -> None:
    text = renders["full"][TURNSERVER_CONF_PATH].text

    assert "listening-ip=10.0.0.7\n" in text
    assert "external-ip=198.51.100.7/10.0.0.7\n" in text
    assert re.findall(r"^allowed-peer-ip=(.*)$", text, flags=re.MULTILINE) == [
        "10.0.0.7",
        "198.51.100.7",
    ]


def test_render_turnserver_with_external_equal_listening_has_no_external_ip(
    renders: Renders,
) -> None:
    text = renders["defaults"][TURNSERVER_CONF_PATH].text

    assert "external-ip=" not in text
    assert re.findall(r"^allowed-peer-ip=(.*)$", text, flags=re.MULTILINE) == ["203.0.113.10"]


def test_allowed_peers_without_addresses_is_empty() -> None:
    assert allowed_peers(Facts()) == []
    assert allowed_peers(Facts("192.0.2.1", "192.0.2.1")) == ["192.0.2.1"]


@pytest.mark.parametrize("case", CASES)
def test_render_turn_secret_appears_only_in_turnserver_conf(renders: Renders, case: str) -> None:
    specs = renders[case]

    assert [spec.path for spec in specs.values() if SECRET in spec.text] == [TURNSERVER_CONF_PATH]
    assert f"static-auth-secret={SECRET}\n" in specs[TURNSERVER_CONF_PATH].text


def test_render_synapse_with_postgresql_uses_the_local_socket_and_peer_role(
    renders: Renders,
) -> None:
    config = yaml.safe_load(renders["full"][SYNAPSE_CONF_PATH].text)

    assert config["database"] == postgres.SYNAPSE_DATABASE_BLOCK


def test_render_synapse_with_remote_postgresql_names_the_passfile_not_the_password() -> None:
    settings = from_mapping({
        "server_name": "example.org", "database": "postgresql", "database_host": "db.example.org",
        "database_port": 5433, "database_name": "synapse", "database_user": "synapse_user",
    })
    specs = {spec.path: spec for spec in render_all(settings, Secrets("s"), Facts())}
    config = yaml.safe_load(specs[SYNAPSE_CONF_PATH].text)

    assert config["database"] == postgres.synapse_database_block(settings)
    assert config["database"]["args"] == {
        "host": "db.example.org", "port": 5433, "database": "synapse", "user": "synapse_user",
        "passfile": "/etc/matrix-stack/secrets/database.pgpass", "cp_min": 5, "cp_max": 10,
    }
    assert "password" not in config["database"]["args"]


# --- Element: nothing sent to a third party by default -------------------------------------

HOSTNAME = re.compile(r"(?:[a-z0-9-]+\.)+[a-z][a-z0-9-]+", re.IGNORECASE)


def string_values(value: object) -> list[str]:
    """Return every string value in a parsed JSON document (keys left out)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in string_values(item)]
    if isinstance(value, list):
        return [text for item in value for text in string_values(item)]
    return []


def test_render_element_config_keeps_calls_widgets_and_integrations_off_third_parties(
    renders: Renders,
) -> None:
    config = json.loads(renders["defaults"][ELEMENT_CONFIG_PATH].text)

    assert config == {
        "default_server_config": {
            "m.homeserver": {"base_url": "https://matrix.example.org",
                             "server_name": "matrix.example.org"}
        },
        "disable_custom_urls": False,
        "disable_guests": True,
        "default_federate": True,
        "brand": "Element",
        "default_theme": "light",
        "room_directory": {"servers": ["matrix.example.org"]},
        "jitsi": {"preferred_domain": "matrix.example.org"},
        "features": {
            "feature_group_calls": False,
            "feature_video_rooms": False,
            "feature_element_call_video_rooms": False,
        },
        "show_labs_settings": False,
        "integrations_ui_url": None,
        "integrations_rest_url": None,
        "integrations_widgets_urls": None,
        "setting_defaults": {
            "UIFeature.registration": False,
            "UIFeature.passwordReset": False,
            "UIFeature.widgets": False,
            "UIFeature.locationSharing": False,
        },
    }


@pytest.mark.parametrize("case", CASES)
def test_render_element_config_names_no_host_but_this_server(
    renders: Renders, case: str, tmp_path: Path
) -> None:
    settings, _facts = case_settings(case, tls_root(tmp_path))
    config = json.loads(renders[case][ELEMENT_CONFIG_PATH].text)
    hosts = {host.lower() for text in string_values(config) for host in HOSTNAME.findall(text)}

    assert hosts <= {settings.server_name, settings.element_domain}
    for absent in ("bug_report_endpoint_url", "map_style_url", "element_call",
                   "widget_build_url", "posthog", "sentry", "piwik"):
        assert absent not in config


@pytest.mark.parametrize("case", CASES)
def test_render_all_writes_exactly_the_files_purge_removes(renders: Renders, case: str) -> None:
    # debian/rules hands paths.GENERATED_FILES to the postrm, which purges them.
    assert sorted(renders[case]) == sorted(GENERATED_FILES)


def test_the_postrm_gets_the_generated_files_from_the_package() -> None:
    postrm = (Path(__file__).parents[3] / "debian" / "matrix-stack.postrm").read_text()
    assert 'GENERATED="#GENERATED_FILES#"' in postrm
    printed = subprocess.run(
        [sys.executable, "-m", "matrix_stack.base.paths"], capture_output=True, text=True,
        check=True,
        cwd=Path(__file__).parents[3],
    ).stdout.split()
    assert printed == [str(path) for path in GENERATED_FILES]


# --- mail -----------------------------------------------------------------------------------


def render_mail(tmp_path: Path, **raw: Any) -> dict[Path, FileSpec]:
    settings = from_mapping({"server_name": "example.org", **raw}, tmp_path)
    return {spec.path: spec for spec in render_all(settings, SECRETS, DEFAULT_FACTS)}


def test_render_synapse_with_mail_off_has_no_email_block_and_element_hides_reset(
    tmp_path: Path,
) -> None:
    specs = render_mail(tmp_path)
    config = yaml.safe_load(specs[SYNAPSE_CONF_PATH].text)
    element = json.loads(specs[ELEMENT_CONFIG_PATH].text)

    assert "email" not in config
    assert "admin_contact" not in config
    assert element["setting_defaults"]["UIFeature.passwordReset"] is False


def test_render_synapse_with_relay_tls_forces_tls_on_465_and_element_shows_reset(
    tmp_path: Path,
) -> None:
    specs = render_mail(tmp_path, mail="relay", mail_relay_host="192.0.2.25",
                        mail_relay_security="tls")
    email = yaml.safe_load(specs[SYNAPSE_CONF_PATH].text)["email"]
    element = json.loads(specs[ELEMENT_CONFIG_PATH].text)

    assert email == {
        "smtp_host": "192.0.2.25", "smtp_port": 465, "force_tls": True,
        "require_transport_security": False, "notif_from": "Matrix <noreply@example.org>",
        "app_name": "example.org", "client_base_url": "https://element.example.org/",
        "enable_notifs": True, "notif_for_new_users": True, "validation_token_lifetime": "1h",
    }
    assert element["setting_defaults"]["UIFeature.passwordReset"] is True


def test_render_synapse_with_relay_login_puts_the_stored_password_in_the_email_block(
    tmp_path: Path,
) -> None:
    specs = render_mail(tmp_path, mail="relay", mail_relay_host="smtp.example.org",
                        mail_relay_user="matrix")
    spec = specs[SYNAPSE_CONF_PATH]
    email = yaml.safe_load(spec.text)["email"]

    assert (email["smtp_user"], email["smtp_pass"]) == ("matrix", MAIL_PASSWORD)
    assert (spec.mode, spec.owner) == (0o600, "matrix-synapse")


@pytest.mark.parametrize(
    ("mail", "registration_keys"),
    [("off", {"enable_registration_without_verification": True}),
     ("local", {"registrations_require_3pid": ["email"]})],
)
def test_render_synapse_open_registration_requires_a_verified_email_only_with_mail(
    tmp_path: Path, mail: str, registration_keys: dict[str, Any]
) -> None:
    config = yaml.safe_load(
        render_mail(tmp_path, mail=mail, registration="open")[SYNAPSE_CONF_PATH].text
    )
    found = {key: config[key] for key in config if key.startswith("registration")
             or key == "enable_registration_without_verification"}
    found.pop("registration_shared_secret_path")
    found.pop("registration_shared_secret")  # null: one inline in homeserver.yaml is off

    assert found == registration_keys


def test_render_apache_with_mail_and_reset_off_denies_only_the_reset_request(
    tmp_path: Path,
) -> None:
    on = render_mail(tmp_path, mail="local")[APACHE_SITE_PATH].text
    off = render_mail(tmp_path, mail="local", mail_password_reset=False)[APACHE_SITE_PATH].text

    assert "requestToken" not in on
    assert off.count("/account/password/email/requestToken$") == 2
