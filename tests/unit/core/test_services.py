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
