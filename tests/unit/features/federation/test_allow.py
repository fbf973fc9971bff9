"""federation: mode, allow-list and key servers in stack.yaml, rendered into Synapse's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_stack.base.errors import MatrixStackError, SettingsError
from matrix_stack.base.files import host_path
from matrix_stack.base.paths import ELEMENT_CONFIG_PATH, STACK_PATH, SYNAPSE_CONF_PATH
from matrix_stack.base.secrets import Secrets
from matrix_stack.cli.federation import run_allow, run_check, run_deny, run_mode
from matrix_stack.cli.main import build_parser
from matrix_stack.core import stack as stack_file
from matrix_stack.core.apply import apply
from matrix_stack.core.host import Facts
from matrix_stack.core.render import render_all
from matrix_stack.core.settings import FederationMode, Settings
from matrix_stack.features.federation.allow import (
    allow,
    change_stack,
    deny,
    describe,
    describe_lines,
    set_mode,
)
from tests.unit.helpers import BASE_STACK, SynapseCheck, make_settings

FACTS = Facts(listening_ip="203.0.113.10", external_ip="203.0.113.10")


def synapse_yaml(settings: Settings) -> dict[str, Any]:
    files = {spec.path: spec.text for spec in render_all(settings, Secrets("t"), FACTS)}
    content = yaml.safe_load(files[SYNAPSE_CONF_PATH])
    assert isinstance(content, dict)
    return content


def test_allow_adds_new_domains_in_order_and_says_which_were_there() -> None:
    stack = {"server_name": "a.example.org", "federation_domains": ["b.example.org"]}

    change = allow(stack, ["B.example.org", "c.example.org:8448"])

    assert change.stack["federation_domains"] == ["b.example.org", "c.example.org:8448"]
    assert change.notes == ("b.example.org is already allowed", "allowed c.example.org:8448")
    assert "federation_key_servers" not in change.stack
    assert stack["federation_domains"] == ["b.example.org"]  # the input is left alone


def test_allow_with_key_server_also_trusts_the_peer_for_keys() -> None:
    change = allow({"server_name": "a.example.org"}, ["b.example.org"], key_server=True)

    assert change.stack["federation_key_servers"] == ["b.example.org"]
    assert change.notes == ("allowed b.example.org", "trusting b.example.org as a key server")


def test_allow_refuses_an_invalid_domain_naming_it() -> None:
    with pytest.raises(SettingsError, match="'bad_name!' is not a DNS name"):
        allow({"server_name": "a.example.org"}, ["bad_name!"])


def test_allow_refuses_an_invalid_port() -> None:
    with pytest.raises(SettingsError, match="invalid port"):
        allow({"server_name": "a.example.org"}, ["b.example.org:99999"])


def test_allow_refuses_this_server_itself() -> None:
    with pytest.raises(MatrixStackError, match="is this server itself"):
        allow({"server_name": "a.example.org"}, ["a.example.org"])


def test_allow_in_open_mode_notes_that_every_server_is_admitted_anyway() -> None:
    change = allow({"server_name": "a.example.org", "federation": "open"}, ["b.example.org"])

    assert change.notes[-1].startswith("note: federation is open")


def test_deny_removes_the_domain_from_the_list_and_the_key_servers() -> None:
    stack = {
        "server_name": "a.example.org",
        "federation_domains": ["b.example.org", "c.example.org"],
        "federation_key_servers": ["b.example.org"],
    }

    change = deny(stack, ["b.example.org", "d.example.org"])

    assert change.stack["federation_domains"] == ["c.example.org"]
    assert change.stack["federation_key_servers"] == []
    assert change.notes == ("denied b.example.org", "d.example.org was not allowed")


def test_set_mode_off_from_a_hand_edited_unquoted_off_says_already() -> None:
    # YAML 1.1 reads "federation: off" as false.
    assert set_mode({"federation": False}, "off").notes == ("federation is already off",)


def test_set_mode_to_allow_list_with_an_empty_list_warns_nobody_is_admitted() -> None:
    change = set_mode({"federation": "open"}, "allow-list")

    assert change.stack["federation"] == "allow-list"
    assert change.notes[0] == "federation: open -> allow-list"
    assert "allow-list is empty" in change.notes[1]


def test_set_mode_refuses_an_unknown_mode() -> None:
    with pytest.raises(SettingsError, match="is not one of: allow-list, open, off"):
        set_mode({}, "closed")


def test_render_allow_list_with_key_server_trusts_only_allowed_peers() -> None:
    settings = make_settings(
        federation_domains=["b.example.org", "c.example.org"],
        federation_key_servers=["c.example.org", "z.example.org"],
    )
    content = synapse_yaml(settings)

    assert content["federation_domain_whitelist"] == ["b.example.org", "c.example.org"]
    assert content["trusted_key_servers"] == [{"server_name": "c.example.org"}]
    assert "suppress_key_server_warning" not in content
    assert any("z.example.org is not in federation_domains" in w for w in settings.warnings)


def test_render_allow_list_without_key_servers_fetches_keys_from_each_origin() -> None:
    content = synapse_yaml(make_settings(federation_domains=["b.example.org"]))

    assert content["trusted_key_servers"] == []


def test_render_open_trusts_matrix_org_and_the_listed_key_servers_silently() -> None:
    content = synapse_yaml(
        make_settings(federation="open", federation_key_servers=["b.example.org"])
    )

    assert "federation_domain_whitelist" not in content
    assert content["trusted_key_servers"] == [
        {"server_name": "matrix.org"}, {"server_name": "b.example.org"},
    ]
    assert content["suppress_key_server_warning"] is True


def test_render_off_has_an_empty_whitelist_and_no_key_servers() -> None:
    content = synapse_yaml(
        make_settings(federation="off", federation_domains=["b.example.org"],
                      federation_key_servers=["b.example.org"])
    )

    assert content["federation_domain_whitelist"] == []
    assert content["trusted_key_servers"] == []


def test_stack_yaml_keeps_key_servers_as_a_bare_flow_list() -> None:
    stack = {**BASE_STACK, "federation_domains": ["b.example.org:8448"],
             "federation_key_servers": ["b.example.org:8448"]}

    text = stack_file.render_stack(stack)

    assert "\nfederation_key_servers: [b.example.org:8448]\n" in text
    assert yaml.safe_load(text) == stack


def test_describe_lists_mode_allowed_servers_and_key_servers() -> None:
    settings = make_settings(federation_domains=["b.example.org", "c.example.org"],
                             federation_key_servers=["c.example.org"])

    assert describe(settings) == {
        "server_name": "matrix.example.org",
        "mode": "allow-list",
        "allowed": ["b.example.org", "c.example.org"],
        "key_servers": ["c.example.org"],
    }
    assert describe_lines(settings) == [
        "mode: allow-list", "  b.example.org", "  c.example.org  (key server)",
    ]


def test_describe_lines_in_off_mode_say_no_server_is_admitted() -> None:
    lines = describe_lines(make_settings(federation="off"))

    assert lines == ["mode: off", "allowed: none (the list below applies in allow-list mode)",
                     "  (no server listed)"]


def write_stack(root: Path, **overrides: Any) -> None:
    stack_file.write_stack({**BASE_STACK, **overrides}, root)


def test_change_stack_writes_stack_yaml_and_applies_only_synapse_and_element(
    applied_root: Path,
) -> None:
    write_stack(applied_root)
    check = SynapseCheck()

    def apply_settings(settings: Settings) -> list[str]:
        return apply(settings, root=applied_root, validate_synapse=check).lines()

    change, lines = change_stack(lambda stack: set_mode(stack, "off"), root=applied_root,
                                 apply_settings=apply_settings)

    assert stack_file.read_stack(applied_root)["federation"] == "off"
    assert lines == [f"updated {SYNAPSE_CONF_PATH}", f"updated {ELEMENT_CONFIG_PATH}"]
    synapse = yaml.safe_load(host_path(SYNAPSE_CONF_PATH, applied_root).read_text())
    assert synapse["federation_domain_whitelist"] == []
    element = json.loads(host_path(ELEMENT_CONFIG_PATH, applied_root).read_text())
    assert element["default_federate"] is False
    assert len(check.calls) == 1


def test_change_stack_that_changes_nothing_does_not_apply(applied_root: Path) -> None:
    write_stack(applied_root, federation_domains=["b.example.org"])

    def refuse(settings: Settings) -> list[str]:
        raise AssertionError("applied although nothing changed")

    change, lines = change_stack(lambda stack: allow(stack, ["b.example.org"]),
                                 root=applied_root, apply_settings=refuse)

    assert (change.notes, lines) == (("b.example.org is already allowed",), [])


def test_change_stack_puts_stack_yaml_back_when_the_apply_fails(applied_root: Path) -> None:
    write_stack(applied_root)
    before = host_path(STACK_PATH, applied_root).read_text()

    def fail(settings: Settings) -> list[str]:
        raise MatrixStackError("Synapse refused the configuration")

    with pytest.raises(MatrixStackError, match="Synapse refused"):
        change_stack(lambda stack: allow(stack, ["b.example.org"]), root=applied_root,
                     apply_settings=fail)

    assert host_path(STACK_PATH, applied_root).read_text() == before


def test_change_stack_refuses_an_invalid_result_before_writing(applied_root: Path) -> None:
    write_stack(applied_root, federation_domains=["not a name!"])
    before = host_path(STACK_PATH, applied_root).read_text()

    with pytest.raises(SettingsError):
        change_stack(lambda stack: set_mode(stack, "open"), root=applied_root,
                     apply_settings=lambda settings: [])

    assert host_path(STACK_PATH, applied_root).read_text() == before


@pytest.mark.parametrize(
    ("argv", "handler", "expected"),
    [
        (["federation", "allow", "b.example.org", "c.example.org", "--key-server"], run_allow,
         {"domains": ["b.example.org", "c.example.org"], "key_server": True}),
        (["federation", "deny", "b.example.org"], run_deny, {"domains": ["b.example.org"]}),
        (["federation", "mode", "off"], run_mode, {"mode": "off"}),
        (["federation", "check", "--json"], run_check, {"server": None, "json": True}),
    ],
)
def test_federation_commands_parse_to_their_handlers(
    argv: list[str], handler: Any, expected: dict[str, Any]
) -> None:
    arguments = build_parser().parse_args(argv)

    assert arguments.handler is handler
    assert {key: getattr(arguments, key) for key in expected} == expected


def test_federation_mode_refuses_an_unknown_mode_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["federation", "mode", "closed"])

    assert caught.value.code == 2
    assert "invalid choice: 'closed'" in capsys.readouterr().err


def test_federation_allow_needs_a_domain(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["federation", "allow"])

    assert caught.value.code == 2


def test_settings_mode_default_is_allow_list_with_nothing_trusted() -> None:
    settings = make_settings()

    assert (settings.federation, settings.trusted_key_servers) == (FederationMode.ALLOW_LIST, ())
