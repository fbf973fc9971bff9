"""services: the pure parts (which Apache modules the site needs)."""

from __future__ import annotations

import pytest

from matrix_stack.services import apache_modules
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
