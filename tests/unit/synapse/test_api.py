"""synapse_api and bootstrap against a loopback HTTP server that checks requests as Synapse does.

The server is a test double of Synapse's register and admin endpoints; the real Synapse is
exercised by tests/system/test_users.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from matrix_stack.base.errors import MatrixStackError, UsageError
from matrix_stack.features.bootstrap import bootstrap_admin
from matrix_stack.synapse.api import (
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
    register_behind_a_gateway = False  # register answers a gateway's HTML error page

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def reply_raw(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.requests.append(("GET", self.path))
        route = self.path.split("?")[0]
        if route == "/bad-gateway":  # another program on the port, e.g. a proxy's error page
            self.reply_raw(502, "text/html", b"<html><body>502 Bad Gateway</body></html>\n")
        elif route == "/empty":
            self.reply_raw(200, "", b"")
        elif route == "/not-json":
            self.reply_raw(200, "text/html", b"<html>It works!</html>")
        elif route == "/json-list":
            self.reply_raw(200, "application/json", b"[]")
        elif self.path == "/_matrix/client/versions":
            self.reply(200, {"versions": ["v1.11"]})
        elif self.path == "/_synapse/admin/v1/register" and self.register_behind_a_gateway:
            self.reply_raw(502, "text/html", b"<html><body>502 Bad Gateway</body></html>\n")
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
    FakeSynapse.register_behind_a_gateway = False
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


def test_users_asks_for_large_pages_and_passes_its_filters(synapse: Synapse) -> None:
    synapse.token = "admin-token"

    list(synapse.users(include_deactivated=True, user_id="@al:x", admins=True))

    assert FakeSynapse.requests == [(
        "GET", "/_synapse/admin/v2/users?from=0&limit=5000&deactivated=true&order_by=name"
        "&user_id=%40al%3Ax&admins=true",
    )]


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
    monkeypatch.setattr("matrix_stack.features.bootstrap.read_root_secret", lambda path: SECRET)

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


def test_bootstrap_when_register_answers_no_json_says_so_and_does_not_raise(
    synapse: Synapse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("matrix_stack.features.bootstrap.read_root_secret", lambda path: SECRET)
    FakeSynapse.register_behind_a_gateway = True

    line = bootstrap_admin("admin", "pw", SERVER, synapse=synapse, wait_seconds=0)

    assert line == (
        "@admin:example.org was not created (Synapse's answer to GET /_synapse/admin/v1/register "
        "is no JSON object (HTTP 502, text/html): is another program listening on "
        f"{synapse.base_url}? see: systemctl status matrix-synapse); create it later with: "
        "matrix-stack-admin user add admin --admin"
    )


def test_bootstrap_without_password_creates_nothing(synapse: Synapse) -> None:
    line = bootstrap_admin("admin", "", SERVER, synapse=synapse, wait_seconds=0)

    assert line.startswith("no password was given for the administrator @admin:example.org")
    assert FakeSynapse.requests == []


class ProxyListener(BaseHTTPRequestHandler):
    """Stands for the HTTP proxy the environment names: records whatever reaches it."""

    received: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def record(self) -> None:
        self.received.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = record  # noqa: N815 - http.server's naming


@pytest.fixture
def proxy_in_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Run a proxy listener named by every proxy variable; yield the requests it receives."""
    ProxyListener.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ProxyListener)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with monkeypatch.context() as patch:
            for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                         "ALL_PROXY"):
                patch.setenv(name, proxy)
            for name in ("no_proxy", "NO_PROXY"):
                patch.delenv(name, raising=False)
            # urlopen keeps the opener it first built: rebuild it under this environment.
            urllib.request.install_opener(urllib.request.build_opener())
            yield ProxyListener.received
    finally:
        urllib.request.install_opener(urllib.request.build_opener())
        server.shutdown()
        server.server_close()


def test_admin_token_and_passwords_reach_synapse_and_never_the_environments_proxy(
    synapse: Synapse, proxy_in_environment: list[str]
) -> None:
    synapse.register(UserId("alice", SERVER), "pw", admin=True, shared_secret=SECRET)
    synapse.token = "admin-token"

    names = [user["name"] for user in synapse.users(include_deactivated=False)]

    assert names == ["@alice:example.org"]
    assert FakeSynapse.requests == [
        ("GET", "/_synapse/admin/v1/register"),
        ("POST", "/_synapse/admin/v1/register"),
        ("GET", "/_synapse/admin/v2/users?from=0&limit=5000&deactivated=false&order_by=name"),
    ]
    assert proxy_in_environment == []


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/bad-gateway", "HTTP 502, text/html"),
        ("/empty", "HTTP 200, empty"),
        ("/not-json", "HTTP 200, text/html"),
        ("/json-list", "HTTP 200, application/json"),
    ],
)
def test_an_answer_that_is_no_json_object_is_one_line_naming_path_and_status(
    synapse: Synapse, path: str, what: str
) -> None:
    with pytest.raises(MatrixStackError) as raised:
        synapse.request("GET", f"{path}?token=x", authenticated=False)

    assert type(raised.value) is MatrixStackError
    assert str(raised.value) == (
        f"Synapse's answer to GET {path} is no JSON object ({what}): is another program "
        f"listening on {synapse.base_url}? see: systemctl status matrix-synapse"
    )


def test_a_program_that_does_not_speak_http_is_one_line() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def greet() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(MatrixStackError) as raised:
            Synapse(base_url, timeout=5).request("GET", "/_matrix/client/versions")
    finally:
        thread.join(5)
        listener.close()

    assert str(raised.value) == (
        f"Synapse does not answer on {base_url} (SSH-2.0-OpenSSH_9.2); is it running? "
        "see: systemctl status matrix-synapse"
    )
