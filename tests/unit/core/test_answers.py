"""answers: the one table between debconf questions, stack.yaml and Settings.

The config script (debian/matrix-stack.config, POSIX sh) reads stack.yaml back before
asking; these tests run its own stack_value function on files written by write_stack, so
the sh reader and the Python writer are proved to agree.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_stack.base.errors import MatrixStackError, SettingsError
from matrix_stack.base.paths import STACK_PATH
from matrix_stack.core import answers
from matrix_stack.core.answers import (
    ANSWERS,
    BOOTSTRAP_QUESTIONS,
    DATABASE_PASSWORD_QUESTION,
    FILE_ONLY_KEYS,
    MAIL_PASSWORD_QUESTION,
    debconf_from_yaml,
    yaml_from_debconf,
)
from matrix_stack.core.settings import FederationMode, Settings
from matrix_stack.core.stack import (
    STACK_HEADER,
    load_settings,
    read_stack,
    render_stack,
    write_stack,
)

DEBIAN_DIR = Path(__file__).resolve().parents[3] / "debian"
TEMPLATES_FILE = DEBIAN_DIR / "matrix-stack.templates"
CONFIG_SCRIPT = DEBIAN_DIR / "matrix-stack.config"
PREFIX = "matrix-stack/"


class DictDebconf:
    """debconf answers held in a dict: the get/set part of the debconf protocol."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)

    def get(self, question: str) -> str:
        return self.values[question]

    def set(self, question: str, value: str) -> None:
        self.values[question] = value


PRESEED = {
    "matrix-stack/server-name": "example.org",
    "matrix-stack/element-domain": "chat.example.org",
    "matrix-stack/element-version": "1.11.90",
    "matrix-stack/element-source": "file:///srv/element/element-v{version}.tar.gz",
    "matrix-stack/tls": "self-signed",
    "matrix-stack/tls-cert": "",
    "matrix-stack/tls-key": "",
    "matrix-stack/acme-email": "",
    "matrix-stack/turn-enable": "true",
    "matrix-stack/turn-domain": "turn.example.org",
    "matrix-stack/turn-external-ip": "198.51.100.7/10.0.0.7",
    "matrix-stack/turn-listening-ip": "10.0.0.7",
    "matrix-stack/federation": "allow-list",
    "matrix-stack/federation-domains": "example.com, matrix.example.net:8448",
    "matrix-stack/registration": "token",
    "matrix-stack/behind-proxy": "false",
    "matrix-stack/database": "postgresql",
    "matrix-stack/database-host": "db.example.org",
    "matrix-stack/database-port": "5433",
    "matrix-stack/database-name": "synapse",
    "matrix-stack/database-user": "synapse_user",
    "matrix-stack/mail": "relay",
    "matrix-stack/mail-from": "Chat <chat@example.org>",
    "matrix-stack/mail-relay-host": "smtp.example.org",
    "matrix-stack/mail-relay-port": "465",
    "matrix-stack/mail-relay-security": "tls",
    "matrix-stack/mail-relay-user": "matrix@example.org",
    "matrix-stack/mail-password-reset": "false",
    "matrix-stack/admin-email": "admin@example.org",
    "matrix-stack/workers": "sync=2, media=1",
}


ONE_TIME_QUESTIONS = {*BOOTSTRAP_QUESTIONS, DATABASE_PASSWORD_QUESTION, MAIL_PASSWORD_QUESTION}


def template_questions() -> list[str]:
    text = TEMPLATES_FILE.read_text(encoding="utf-8")
    return re.findall(r"^Template: (\S+)$", text, flags=re.MULTILINE)


def kept_questions() -> list[str]:
    """Return the config script's KEPT list as the build fills it in (debian/rules)."""
    text = CONFIG_SCRIPT.read_text(encoding="utf-8")
    assert re.search(r'^KEPT="#KEPT_QUESTIONS#"$', text, flags=re.MULTILINE)
    rules = (DEBIAN_DIR / "rules").read_text(encoding="utf-8")
    assert ("dh_installdebconf -DKEPT_QUESTIONS="
            '"$$(PYTHONPATH=$(CURDIR) python3 -m matrix_stack.core.answers)"') in rules
    printed = subprocess.run(
        [sys.executable, "-m", "matrix_stack.core.answers"], cwd=DEBIAN_DIR.parent,
        env={**os.environ, "PYTHONPATH": str(DEBIAN_DIR.parent)},
        capture_output=True, text=True, check=True,
    ).stdout
    return printed.split()


def stack_value_function() -> str:
    """Return the text of the sh function stack_value from the config script."""
    text = CONFIG_SCRIPT.read_text(encoding="utf-8")
    match = re.search(r"^stack_value\(\) \{\n.*?^\}\n", text, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, "stack_value() not found in debian/matrix-stack.config"
    return match.group(0)


def sh_stack_values(stack_file: Path, keys: list[str]) -> dict[str, str]:
    """Return what the config script's stack_value prints for each key, as db_set gets it."""
    script = (
        f"{stack_value_function()}\n"
        'STACK="$1"; shift\n'
        'for key in "$@"; do printf "%s\\0" "$(stack_value "$key")"; done\n'
    )
    result = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(stack_file), *keys],
        capture_output=True, check=True, text=True,
    )
    return dict(zip(keys, result.stdout.split("\0")[:-1], strict=True))


# --- the table ----------------------------------------------------------------------------


def test_every_template_question_is_in_the_table() -> None:
    # Notes and errors the config script shows; they hold no answer.
    questions = set(template_questions()) - {"matrix-stack/invalid", "matrix-stack/adopt"}
    table = {answer.question for answer in ANSWERS} | ONE_TIME_QUESTIONS

    assert sorted(questions - table) == []


def test_every_table_question_has_a_template() -> None:
    table = {answer.question for answer in ANSWERS} | ONE_TIME_QUESTIONS

    assert sorted(table - set(template_questions())) == []


def test_kept_answers_have_a_template() -> None:
    assert sorted({a.question for a in ANSWERS} - set(template_questions())) == []


def test_keys_are_question_names_with_dashes_as_underscores() -> None:
    for answer in ANSWERS:
        assert answer.question.startswith(PREFIX)
        assert answer.key == answer.question.removeprefix(PREFIX).replace("-", "_")


def test_table_keys_and_file_only_keys_are_exactly_the_settings_fields() -> None:
    keys = [answer.key for answer in ANSWERS] + list(FILE_ONLY_KEYS)
    fields = [name for name in Settings.__dataclass_fields__ if name != "warnings"]

    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(fields)


def test_config_script_kept_list_equals_the_table() -> None:
    assert kept_questions() == [answer.question.removeprefix(PREFIX) for answer in ANSWERS]


# --- debconf <-> stack.yaml ---------------------------------------------------------------


def test_yaml_from_debconf_converts_booleans_and_lists() -> None:
    stack = yaml_from_debconf(DictDebconf(PRESEED))

    assert stack == {
        "server_name": "example.org",
        "element_domain": "chat.example.org",
        "element_version": "1.11.90",
        "element_source": "file:///srv/element/element-v{version}.tar.gz",
        "tls": "self-signed",
        "tls_cert": "",
        "tls_key": "",
        "acme_email": "",
        "turn_enable": True,
        "turn_domain": "turn.example.org",
        "turn_external_ip": "198.51.100.7/10.0.0.7",
        "turn_listening_ip": "10.0.0.7",
        "federation": "allow-list",
        "federation_domains": ["example.com", "matrix.example.net:8448"],
        "registration": "token",
        "behind_proxy": False,
        "database": "postgresql",
        "database_host": "db.example.org",
        "database_port": 5433,
        "database_name": "synapse",
        "database_user": "synapse_user",
        "mail": "relay",
        "mail_from": "Chat <chat@example.org>",
        "mail_relay_host": "smtp.example.org",
        "mail_relay_port": 465,
        "mail_relay_security": "tls",
        "mail_relay_user": "matrix@example.org",
        "mail_password_reset": False,
        "admin_email": "admin@example.org",
        "workers": "sync=2, media=1",
    }


def test_yaml_from_debconf_strips_surrounding_blanks() -> None:
    debconf = DictDebconf({**PRESEED, "matrix-stack/server-name": "  example.org \n"})

    assert yaml_from_debconf(debconf)["server_name"] == "example.org"


def test_debconf_from_yaml_of_yaml_from_debconf_gives_the_answers_back() -> None:
    assert debconf_from_yaml(yaml_from_debconf(DictDebconf(PRESEED))) == PRESEED


def test_debconf_from_yaml_sets_only_keys_present_in_the_file() -> None:
    assert debconf_from_yaml({"server_name": "example.org", "proxy_addresses": ["::1"]}) == {
        "matrix-stack/server-name": "example.org"
    }


def test_debconf_from_yaml_writes_lists_comma_separated_and_booleans_as_debconf_does() -> None:
    assert debconf_from_yaml(
        {"federation_domains": ["a.example", "b.example:8448"], "turn_enable": False,
         "behind_proxy": True, "acme_email": None}
    ) == {
        "matrix-stack/federation-domains": "a.example, b.example:8448",
        "matrix-stack/turn-enable": "false",
        "matrix-stack/behind-proxy": "true",
        "matrix-stack/acme-email": "",
    }


# --- stack.yaml on disk -------------------------------------------------------------------

ROUND_TRIP_STACK: dict[str, Any] = {
    "server_name": "example.org",
    "element_domain": "",
    "element_version": "1.11.90",
    "element_source": "https://mirror.example.org/v{version}/element-v{version}.tar.gz",
    "tls": "files",
    "tls_cert": "/etc/ssl/my cert's.pem",
    "tls_key": '/etc/ssl/"quoted": key.pem',
    "acme_email": "admin@example.org # not a comment",
    "turn_enable": False,
    "turn_domain": "yes",
    "turn_external_ip": "2001:db8::7",
    "turn_listening_ip": "1.5",
    "federation": "off",
    "federation_domains": ["example.com", "matrix.example.net:8448"],
    "registration": "null",
    "behind_proxy": True,
    "proxy_addresses": ["192.0.2.10/32", "::1/128"],
    "database": "sqlite",
}


def test_render_stack_writes_header_then_one_flat_line_per_key_in_table_order() -> None:
    text = render_stack(
        {"database": "sqlite", "server_name": "example.org", "turn_enable": True,
         "federation_domains": ["example.com", "matrix.example.net:8448"], "not_a_key": "x"}
    )

    assert text == STACK_HEADER + (
        "server_name: example.org\n"
        "turn_enable: true\n"
        "federation_domains: [example.com, matrix.example.net:8448]\n"
        "database: sqlite\n"
    )


def test_render_stack_quotes_strings_yaml_would_read_as_other_types() -> None:
    text = render_stack({"federation": "off", "turn_domain": "yes", "turn_listening_ip": "1.5"})

    assert text.removeprefix(STACK_HEADER) == (
        "turn_domain: 'yes'\nturn_listening_ip: '1.5'\nfederation: 'off'\n"
    )


def test_write_stack_then_read_stack_gives_every_value_back(tmp_path: Path) -> None:
    assert write_stack(ROUND_TRIP_STACK, tmp_path) is True

    assert read_stack(tmp_path) == ROUND_TRIP_STACK


@pytest.mark.parametrize(
    "value",
    ["", "plain", "with spaces", "it's", 'say "hi"', "a: b", "x #y", "[not a list]", "{x}",
     "é ü", "- dash", "true", "~", "0o17", "2024-01-01"],
)
def test_render_stack_then_yaml_reads_any_string_back(value: str) -> None:
    text = render_stack({"tls_cert": value})

    assert yaml.safe_load(text) == {"tls_cert": value}
    assert len(text.removeprefix(STACK_HEADER).splitlines()) == 1


def test_write_stack_sets_mode_0644_and_tuples_read_back_as_lists(tmp_path: Path) -> None:
    write_stack({"server_name": "example.org", "federation_domains": ("a.example",)}, tmp_path)

    path = tmp_path / "etc/matrix-stack/stack.yaml"
    assert path.stat().st_mode & 0o777 == 0o644
    assert read_stack(tmp_path) == {
        "server_name": "example.org",
        "federation_domains": ["a.example"],
    }


def test_write_stack_with_same_settings_does_not_rewrite(tmp_path: Path) -> None:
    write_stack(ROUND_TRIP_STACK, tmp_path)
    path = tmp_path / "etc/matrix-stack/stack.yaml"
    before = path.stat()

    assert write_stack(dict(ROUND_TRIP_STACK), tmp_path) is False

    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_write_stack_with_changed_setting_rewrites(tmp_path: Path) -> None:
    write_stack(ROUND_TRIP_STACK, tmp_path)

    assert write_stack({**ROUND_TRIP_STACK, "registration": "open"}, tmp_path) is True
    assert read_stack(tmp_path)["registration"] == "open"


def test_write_stack_replaces_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "etc/matrix-stack/stack.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("server_name: [unclosed\n")

    assert write_stack({"server_name": "example.org"}, tmp_path) is True
    assert read_stack(tmp_path) == {"server_name": "example.org"}


def test_read_stack_of_missing_file_says_to_reconfigure(tmp_path: Path) -> None:
    with pytest.raises(MatrixStackError) as caught:
        read_stack(tmp_path)

    assert str(caught.value) == (
        "/etc/matrix-stack/stack.yaml is missing; run: dpkg-reconfigure matrix-stack"
    )


def test_read_stack_of_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "etc/matrix-stack/stack.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("server_name: example.org\ntls: [files\n")

    with pytest.raises(MatrixStackError) as caught:
        read_stack(tmp_path)

    assert re.fullmatch(
        r"/etc/matrix-stack/stack\.yaml line \d+ is not valid YAML; fix it", str(caught.value)
    )


def test_read_stack_of_a_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "etc/matrix-stack/stack.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("- server_name\n")

    with pytest.raises(MatrixStackError) as caught:
        read_stack(tmp_path)

    assert str(caught.value) == "/etc/matrix-stack/stack.yaml must be a mapping of setting: value"


def test_read_stack_of_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "etc/matrix-stack/stack.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("# only comments\n")

    assert read_stack(tmp_path) == {}


def test_stack_path_is_the_documented_one() -> None:
    assert Path("/etc/matrix-stack/stack.yaml") == STACK_PATH


# --- the sh reader agrees with the Python writer ------------------------------------------

SH_STACKS: list[dict[str, Any]] = [
    yaml_from_debconf(DictDebconf(PRESEED)),
    ROUND_TRIP_STACK,
    {
        "server_name": "matrix.example.org",
        "element_domain": "matrix.example.org",
        "element_source": "file:///srv/éléments/element-v{version}.tar.gz",
        "tls": "acme",
        "acme_email": "admin@example.org",
        "turn_enable": True,
        "turn_external_ip": "",
        "turn_listening_ip": "  ",
        "federation": "open",
        "federation_domains": [],
        "behind_proxy": False,
    },
]


@pytest.mark.parametrize("stack", SH_STACKS, ids=["preseed", "awkward-values", "acme-empty"])
def test_config_script_stack_value_reads_what_debconf_from_yaml_gives(
    tmp_path: Path, stack: dict[str, Any]
) -> None:
    write_stack(stack, tmp_path)
    keys = [answer.key for answer in ANSWERS if answer.key in stack]

    from_sh = sh_stack_values(tmp_path / "etc/matrix-stack/stack.yaml", keys)

    expected = debconf_from_yaml(stack)
    assert {answers.QUESTION_OF_KEY[key]: value for key, value in from_sh.items()} == expected


def test_config_script_stack_value_reads_a_quoted_value_holding_a_quote(tmp_path: Path) -> None:
    stack = {"tls_cert": "/etc/ssl/it's: here.pem"}
    write_stack(stack, tmp_path)

    from_sh = sh_stack_values(tmp_path / "etc/matrix-stack/stack.yaml", ["tls_cert"])

    assert from_sh == {"tls_cert": "/etc/ssl/it's: here.pem"}


def test_config_script_stack_value_takes_the_last_line_of_a_key(tmp_path: Path) -> None:
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text("tls: files\nregistration: open\ntls: 'acme'  \n")

    assert sh_stack_values(stack_file, ["tls", "registration", "federation"]) == {
        "tls": "acme",
        "registration": "open",
        "federation": "",
    }


# --- validation errors say where to fix them ----------------------------------------------


def test_load_settings_from_debconf_names_the_question_and_dpkg_reconfigure() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"server_name": "bad_name"}, "debconf")

    error = caught.value
    assert error.question == "matrix-stack/server-name"
    assert error.exit_code == 2
    assert str(error) == (
        "matrix-stack/server-name: 'bad_name' is not a DNS name (letters, digits and hyphens "
        "in dot-separated labels); change it with: dpkg-reconfigure matrix-stack"
    )


def test_load_settings_from_debconf_names_a_file_only_key_as_itself() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"server_name": "example.org", "proxy_addresses": ["bad"]}, "debconf")

    assert caught.value.question == "proxy_addresses"


def test_load_settings_from_file_names_the_key_and_the_file() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {"server_name": "example.org", "federation_domains": "a.example:99999"},
            str(STACK_PATH),
        )

    assert str(caught.value) == (
        "federation_domains in /etc/matrix-stack/stack.yaml: 'a.example:99999' has an invalid "
        "port (1-65535); fix the file, then run: matrix-stack-admin apply"
    )


def test_load_settings_reads_an_unquoted_off_as_federation_off(tmp_path: Path) -> None:
    path = tmp_path / "etc/matrix-stack/stack.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("server_name: example.org\nfederation: off\n")

    settings = load_settings(read_stack(tmp_path), str(STACK_PATH), tmp_path)

    assert settings.federation is FederationMode.OFF


def test_load_settings_of_the_preseed_gives_settings() -> None:
    settings = load_settings(yaml_from_debconf(DictDebconf(PRESEED)), "debconf")

    assert (settings.server_name, settings.federation_domains, settings.turn_external_ip) == (
        "example.org",
        ("example.com", "matrix.example.net:8448"),
        "198.51.100.7/10.0.0.7",
    )
