"""synapse_api and bootstrap against a loopback HTTP server that checks requests as Synapse does.

The server is a test double of Synapse's register and admin endpoints; the real Synapse is
exercised by tests/system/test_users.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from matrix_stack.bootstrap import bootstrap_admin
from matrix_stack.errors import MatrixStackError, UsageError
from matrix_stack.synapse_api import (
    Synapse,
    SynapseError,
    UserId,
    parse_user,
    quote,
    registration_mac,
)

SECRET = "shared-secret"
SERVER = "example.org"


def test_registration_mac_is_hmac_sha1_over_nul_separated_fields() -> None:
    expected = hmac.new(
        SECRET.encode(), "nonce\0alice\0pässword\0admin".encode(), hashlib.sha1
    ).hexdigest()

    assert registration_mac(SECRET, "nonce", "alice", "pässword", True) == expected


def test_registration_mac_distinguishes_admin_from_notadmin() -> None:
    expected = hmac.new(SECRET.encode(), b"n\x00bob\x00pw\x00notadmin", hashlib.sha1).hexdigest()

    assert registration_mac(SECRET, "n", "bob", "pw", False) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("alice", "@alice:example.org"), ("@Alice:example.org", "@alice:example.org"),
     ("bot.1_x=y/z-w+v", "@bot.1_x=y/z-w+v:example.org")],
)
def test_parse_user_accepts_localparts_and_ids_of_this_server(name: str, expected: str) -> None:
    assert str(parse_user(name, SERVER)) == expected


def test_parse_user_refuses_another_servers_user() -> None:
    with pytest.raises(UsageError, match=r"^@carol:other.org is not a user of this server "):
        parse_user("@carol:other.org", SERVER)


@pytest.mark.parametrize("name", ["", "@alice", "al ice", "alice:", "é", "a" * 256])
def test_parse_user_refuses_malformed_names(name: str) -> None:
    with pytest.raises(UsageError):
        parse_user(name, SERVER)


def test_quote_percent_encodes_the_whole_user_id() -> None:
    assert quote(UserId("a/b", SERVER)) == "%40a%2Fb%3Aexample.org"


class FakeSynapse(BaseHTTPRequestHandler):
    """Synapse's shared-secret registration and paged user list, checked the same way."""

    users: dict[str, bool] = {}
    nonces: set[str] = set()
    requests: list[tuple[str, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.requests.append(("GET", self.path))
        if self.path == "/_matrix/client/versions":
            self.reply(200, {"versions": ["v1.11"]})
        elif self.path == "/_synapse/admin/v1/register":
            nonce = f"nonce{len(self.nonces)}"
            self.nonces.add(nonce)
            self.reply(200, {"nonce": nonce})
        elif self.path.startswith("/_synapse/admin/v2/users?"):
            if self.headers.get("Authorization") != "Bearer admin-token":
                self.reply(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid token"})
                return
            start = int(self.path.split("from=")[1].split("&")[0])
            names = sorted(self.users)
            page = [{"name": name, "admin": self.users[name]} for name in names[start:start + 2]]
            body: dict[str, Any] = {"users": page, "total": len(names)}
            if start + 2 < len(names):
                body["next_token"] = str(start + 2)
            self.reply(200, body)
        else:
            self.reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})

    def do_POST(self) -> None:  # noqa: N802
        self.requests.append(("POST", self.path))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/_synapse/admin/v1/register":
            self.reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
            return
        if body["nonce"] not in self.nonces:
            self.reply(400, {"errcode": "M_UNKNOWN", "error": "unrecognised nonce"})
            return
        self.nonces.discard(body["nonce"])
        want = registration_mac(
            SECRET, body["nonce"], body["username"], body["password"], body["admin"]
        )
        if not hmac.compare_digest(want, body["mac"]):
            self.reply(403, {"errcode": "M_FORBIDDEN", "error": "HMAC incorrect"})
            return
        user_id = f"@{body['username'].lower()}:{SERVER}"
        if user_id in self.users:
            self.reply(400, {"errcode": "M_USER_IN_USE", "error": "User ID already taken."})
            return
        self.users[user_id] = body["admin"]
        self.reply(200, {"user_id": user_id})


@pytest.fixture
def synapse() -> Iterator[Synapse]:
    FakeSynapse.users = {}
    FakeSynapse.nonces = set()
    FakeSynapse.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSynapse)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Synapse(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_register_sends_a_mac_synapse_accepts(synapse: Synapse) -> None:
    synapse.register(UserId("alice", SERVER), "pw", admin=True, shared_secret=SECRET)

    assert FakeSynapse.users == {"@alice:example.org": True}


def test_register_with_a_wrong_secret_is_refused_in_one_line(synapse: Synapse) -> None:
    with pytest.raises(SynapseError) as raised:
        synapse.register(UserId("alice", SERVER), "pw", admin=False, shared_secret="wrong")

    assert str(raised.value) == (
        "Synapse refused POST /_synapse/admin/v1/register: HMAC incorrect (403)"
    )


def test_users_follows_next_token_over_every_page(synapse: Synapse) -> None:
    FakeSynapse.users = {f"@u{index}:{SERVER}": False for index in range(5)}
    synapse.token = "admin-token"

    names = [user["name"] for user in synapse.users(include_deactivated=False)]

    assert names == sorted(FakeSynapse.users)
    assert len([r for r in FakeSynapse.requests if r[1].startswith("/_synapse/admin/v2")]) == 3


def test_rejected_token_is_renewed_once_and_the_request_repeated(synapse: Synapse) -> None:
    FakeSynapse.users = {f"@u:{SERVER}": False}
    synapse.token = "stale"
    synapse.renew_token = lambda: "admin-token"

    assert [user["name"] for user in synapse.users(include_deactivated=False)] == [f"@u:{SERVER}"]
    assert synapse.token == "admin-token"


def test_unreachable_synapse_is_one_line_naming_the_unit() -> None:
    with pytest.raises(MatrixStackError, match=r"^Synapse does not answer on http://127.0.0.1:9 "):
        Synapse("http://127.0.0.1:9", timeout=2).request("GET", "/_matrix/client/versions")


def test_bootstrap_creates_the_admin_once(synapse: Synapse, monkeypatch: Any) -> None:
    monkeypatch.setattr("matrix_stack.bootstrap.read_root_secret", lambda path: SECRET)

    first = bootstrap_admin("admin", "pw", SERVER, synapse=synapse, wait_seconds=0)
    second = bootstrap_admin("admin", "other", SERVER, synapse=synapse, wait_seconds=0)

    assert first == "created the administrator @admin:example.org"
    assert second == "@admin:example.org already exists: left unchanged"
    assert FakeSynapse.users == {"@admin:example.org": True}


def test_bootstrap_without_synapse_says_what_to_run_and_does_not_raise() -> None:
    line = bootstrap_admin(
        "admin", "pw", SERVER, synapse=Synapse("http://127.0.0.1:9", timeout=1),
        wait_seconds=0, sleep=lambda seconds: None,
    )

    assert line == (
        "Synapse did not answer within 0 s, so @admin:example.org was not created; create it "
        "later with: matrix-stack-admin user add admin --admin"
    )


def test_bootstrap_without_password_creates_nothing(synapse: Synapse) -> None:
    line = bootstrap_admin("admin", "", SERVER, synapse=synapse, wait_seconds=0)

    assert line.startswith("no password was given for the administrator @admin:example.org")
    assert FakeSynapse.requests == []
