"""services: which Apache modules the site needs; the stage Synapse's check reads."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import APACHE_MODULES_RECORD
from matrix_stack.core import services
from matrix_stack.core.services import apache_modules
from tests.unit.base.test_files import (
    ACCOUNT_UID,
    ServiceAccount,
    as_root,
    assert_untouched,
    plant_victims,
)
from tests.unit.helpers import make_settings

COMMON = ("proxy", "proxy_http", "headers", "alias", "rewrite", "deflate", "filter")


@pytest.mark.parametrize(
    ("raw", "modules"),
    [
        ({}, (*COMMON, "ssl", "http2")),
        ({"tls": "acme", "acme_email": "a@example.org"}, (*COMMON, "ssl", "http2", "md")),
        ({"behind_proxy": True}, (*COMMON, "remoteip")),
        ({"behind_proxy": True, "tls": "acme", "acme_email": "a@example.org"},
         (*COMMON, "remoteip")),
    ],
)
def test_apache_modules_follow_tls_and_proxy_settings(
    raw: dict[str, object], modules: tuple[str, ...]
) -> None:
    assert apache_modules(make_settings(**raw)) == modules


# --- validate_synapse: the staging directory Synapse's account reads ----------------------

Seen = list[tuple[str, int, int, int, bytes]]


def fake_synapse_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, account: ServiceAccount | None = None
) -> Seen:
    """Fake Synapse around validate_synapse; return what its check finds in the stage."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "admin.yaml").write_text("admin: true\n")
    monkeypatch.setattr(services, "SYNAPSE_CONF_DIR", conf_d)
    monkeypatch.setattr(services, "synapse_python", lambda: Path("/usr/bin/python3"))
    monkeypatch.setattr(services, "lookup_ids", lambda _owner, _group: (ACCOUNT_UID, 0))
    seen: Seen = []

    def fake_run(argv: list[str], **_options: object) -> subprocess.CompletedProcess[str]:
        stage = Path(argv[-1])
        for path in [stage, *sorted(stage.iterdir())]:
            status = path.lstat()
            data = path.read_bytes() if stat.S_ISREG(status.st_mode) else b""
            seen.append((path.name if path != stage else ".", status.st_uid, status.st_gid,
                         stat.S_IMODE(status.st_mode), data))
        if account is not None:
            account.act()
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(services, "run", fake_run)
    return seen


def test_validate_synapse_stages_the_files_for_synapses_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "chown", lambda *_arguments, **_options: None)
    monkeypatch.setattr(os, "fchown", lambda *_arguments, **_options: None)
    seen = fake_synapse_check(tmp_path, monkeypatch)

    services.validate_synapse("candidate: 1\n", "matrix-stack.yaml")

    assert [(name, mode, data) for name, _uid, _gid, mode, data in seen[1:]] == [
        ("admin.yaml", 0o600, b"admin: true\n"),
        ("matrix-stack.yaml", 0o600, b"candidate: 1\n"),
    ]


@as_root
def test_validate_synapse_gives_the_stage_to_synapses_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_synapse_check(tmp_path, monkeypatch)

    services.validate_synapse("candidate: 1\n", "matrix-stack.yaml")

    assert [(name, uid, gid) for name, uid, gid, _mode, _data in seen] == [
        (".", ACCOUNT_UID, 0), ("admin.yaml", ACCOUNT_UID, 0),
        ("matrix-stack.yaml", ACCOUNT_UID, 0),
    ]


@as_root
def test_validate_synapse_follows_no_link_synapses_account_plants_in_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp").mkdir(mode=0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    victim, victim_directory = plant_victims(tmp_path)
    account = ServiceAccount(monkeypatch, tmp_path / "tmp", {
        "admin.yaml": victim, "matrix-stack.yaml": victim, "other.yaml": victim_directory,
    })
    fake_synapse_check(tmp_path, monkeypatch, account)

    with contextlib.suppress(OSError):
        services.validate_synapse("candidate: 1\n", "matrix-stack.yaml")

    assert_untouched(victim, victim_directory)


@as_root
def test_validate_synapse_refuses_a_conf_d_synapses_account_could_have_swapped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_synapse_check(tmp_path, monkeypatch)
    conf_d = tmp_path / "conf.d"
    os.chown(conf_d, ACCOUNT_UID, 0)

    with pytest.raises(MatrixStackError) as raised:
        services.validate_synapse("candidate: 1\n", "matrix-stack.yaml")

    assert str(raised.value) == (
        f"{conf_d} must belong to root and be writable by root alone (it is uid {ACCOUNT_UID}, "
        f"mode 755): fix it with chown root: {conf_d} && chmod 755 {conf_d}"
    )
    assert seen == []


def test_validate_synapse_refuses_conf_d_as_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_synapse_check(tmp_path, monkeypatch)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(services, "SYNAPSE_CONF_DIR", tmp_path / "link")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(MatrixStackError, match="it must be a directory, not a link"):
        services.validate_synapse("candidate: 1\n", "matrix-stack.yaml")
    assert seen == []


# --- ensure_apache_enabled: a2query only for what is not linked, one a2enmod ------------------


class FakeApacheTools:
    """a2query, a2enmod and a2ensite over a temporary root's *-enabled links; records argv."""

    def __init__(self, root: Path, disabled_by_admin: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.disabled_by_admin = disabled_by_admin
        self.calls: list[list[str]] = []
        for directory in ("mods-enabled", "sites-enabled"):
            (root / "etc/apache2" / directory).mkdir(parents=True, exist_ok=True)

    def link(self, directory: str, name: str) -> Path:
        return self.root / "etc/apache2" / directory / name

    def __call__(self, argv: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        tool, names = argv[0], [arg for arg in argv[1:] if not arg.startswith("-")]
        returncode = 0
        if tool == "a2query":
            flag, name = argv[1], argv[2]
            link = self.link("mods-enabled" if flag == "-m" else "sites-enabled",
                             f"{name}.load" if flag == "-m" else f"{name}.conf")
            returncode = 0 if link.exists() else 32 if name in self.disabled_by_admin else 1
        elif tool == "a2enmod":
            for name in names + (["socache_shmcb"] if "ssl" in names else []):
                self.link("mods-enabled", f"{name}.load").touch()
        elif tool == "a2ensite":
            for name in names:
                self.link("sites-enabled", f"{name}.conf").touch()
        return subprocess.CompletedProcess(argv, returncode, "", "")


def fake_apache_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      disabled_by_admin: frozenset[str] = frozenset()) -> FakeApacheTools:
    tools = FakeApacheTools(tmp_path, disabled_by_admin)
    monkeypatch.setattr(services, "run", tools)
    return tools


def test_ensure_apache_enabled_asks_only_about_unlinked_modules_and_enables_them_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = fake_apache_tools(tmp_path, monkeypatch)
    for module in ("alias", "deflate", "filter"):  # what Debian's apache2 enables itself
        tools.link("mods-enabled", f"{module}.load").touch()
    settings = make_settings()

    newly = services.ensure_apache_enabled(settings, tmp_path)

    missing = ["proxy", "proxy_http", "headers", "rewrite", "ssl", "http2"]
    assert tools.calls == [
        *(["a2query", "-m", module] for module in missing),
        ["a2enmod", "-m", "-q", *missing],
        ["a2query", "-s", services.APACHE_SITE],
        ["a2ensite", "-m", "-q", services.APACHE_SITE],
    ]
    assert newly == (*sorted([*missing, "socache_shmcb"]), f"site:{services.APACHE_SITE}")
    record = (tmp_path / str(APACHE_MODULES_RECORD).lstrip("/")).read_text().split()
    assert record == sorted([*missing, "socache_shmcb"])

    tools.calls.clear()
    assert services.ensure_apache_enabled(settings, tmp_path) == ()
    assert tools.calls == []  # all linked: not one program run


def test_ensure_apache_enabled_refuses_a_module_the_admin_disabled_before_enabling_any(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = fake_apache_tools(tmp_path, monkeypatch, disabled_by_admin=frozenset({"http2"}))

    with pytest.raises(MatrixStackError) as raised:
        services.ensure_apache_enabled(make_settings(), tmp_path)

    assert str(raised.value) == (
        "Apache module http2 was disabled by the administrator and matrix-stack needs it; "
        "enable it with: a2enmod http2"
    )
    assert not [call for call in tools.calls if call[0] != "a2query"]
    assert not list((tmp_path / "etc/apache2/mods-enabled").iterdir())
