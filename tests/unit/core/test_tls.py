"""tls: which certificate Apache and coturn use, and the self-signed one (real openssl)."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_stack.core.tls import (
    SELF_SIGNED_CERT_PATH,
    SELF_SIGNED_KEY_PATH,
    certificate_names,
    certificate_paths,
    ensure_self_signed,
    expires_soon,
)
from tests.unit.helpers import make_settings, snapshot

CERT = "etc/matrix-stack/tls/self-signed.crt"
KEY = "etc/matrix-stack/tls/self-signed.key"


def test_certificate_paths_per_tls_mode(tmp_path: Path) -> None:
    (tmp_path / "etc/ssl").mkdir(parents=True)
    (tmp_path / "etc/ssl/c.pem").write_text("c\n")
    (tmp_path / "etc/ssl/k.pem").write_text("k\n")
    files = make_settings(
        tmp_path, tls="files", tls_cert="/etc/ssl/c.pem", tls_key="/etc/ssl/k.pem"
    )

    assert certificate_paths(make_settings()) == (
        "/etc/matrix-stack/tls/self-signed.crt",
        "/etc/matrix-stack/tls/self-signed.key",
    )
    assert certificate_paths(files) == ("/etc/ssl/c.pem", "/etc/ssl/k.pem")
    assert certificate_paths(make_settings(tls="acme", acme_email="a@example.org")) is None
    assert (str(SELF_SIGNED_CERT_PATH), str(SELF_SIGNED_KEY_PATH)) == (
        "/" + CERT,
        "/" + KEY,
    )


@pytest.mark.parametrize("tls", ["acme", "files"])
def test_ensure_self_signed_for_other_modes_makes_nothing(tmp_path: Path, tls: str) -> None:
    (tmp_path / "etc/ssl").mkdir(parents=True)
    (tmp_path / "etc/ssl/c.pem").write_text("c\n")
    settings = make_settings(
        tmp_path, tls=tls, acme_email="a@example.org", tls_cert="/etc/ssl/c.pem",
        tls_key="/etc/ssl/c.pem",
    )
    before = snapshot(tmp_path)

    assert ensure_self_signed(settings, tmp_path) is False
    assert snapshot(tmp_path) == before


@pytest.mark.usefixtures("umask_zero")
def test_ensure_self_signed_makes_a_certificate_for_every_public_name(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, turn_domain="turn.example.org")

    assert ensure_self_signed(settings, tmp_path) is True

    assert certificate_names(tmp_path / CERT) == {
        "matrix.example.org",
        "element.matrix.example.org",
        "turn.example.org",
    }
    assert expires_soon(tmp_path / CERT) is False
    assert (tmp_path / CERT).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / KEY).stat().st_mode & 0o777 == 0o640
    assert sorted(path.name for path in (tmp_path / CERT).parent.iterdir()) == [
        "self-signed.crt",
        "self-signed.key",
    ]


def test_ensure_self_signed_with_a_valid_certificate_keeps_it(tmp_path: Path) -> None:
    ensure_self_signed(make_settings(tmp_path), tmp_path)
    before = snapshot(tmp_path)

    assert ensure_self_signed(make_settings(tmp_path), tmp_path) is False
    assert snapshot(tmp_path) == before


def test_ensure_self_signed_with_changed_names_makes_a_new_certificate(tmp_path: Path) -> None:
    ensure_self_signed(make_settings(tmp_path), tmp_path)

    assert ensure_self_signed(make_settings(tmp_path, element_domain="chat.example.org"), tmp_path)
    assert certificate_names(tmp_path / CERT) == {"matrix.example.org", "chat.example.org"}


def test_certificate_names_of_an_unreadable_file_is_empty(tmp_path: Path) -> None:
    (tmp_path / "broken.crt").write_text("not a certificate\n")

    assert certificate_names(tmp_path / "broken.crt") == set()
    assert expires_soon(tmp_path / "broken.crt") is True
