"""Users and passwords on a booted stack, checked with a real Matrix client (matrix-nio).

The stack is installed with a preseeded administrator; the tests then share it in file order.
They run twice: on the monolith (SQLite, one Synapse process), then, on matrix-synapse-py3
only, on PostgreSQL with matrix-stack/workers: auto. Client requests go through Apache on 443,
as a client's do (so, with workers, to the worker that serves them); only the admin API,
which Apache never proxies, is reached on 127.0.0.1:8008.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system import stack
from tests.system.stack import SERVER, apt_install, host_resolves, install, preseed
from tests.system.stack import synapse_request as admin_api
from tests.system.testbed import Container, Target, wait_for

pytestmark = [pytest.mark.system, pytest.mark.every_target]

ADMIN_PASSWORD = "Boot-strap-S3cret"


@pytest.fixture(scope="module", params=["monolith", "workers"])
def ct(request: pytest.FixtureRequest, target: Target, base_tarball: Path,
       deb_path: Path) -> Iterator[Container]:
    workers = request.param == "workers"
    if workers:
        stack.skip_unless_workers_run(target)
    container = Container(base_tarball, name=f"users-{request.param}", hostname=SERVER)
    try:
        container.boot()
        answers = {"admin-user": "admin", "admin-password": ADMIN_PASSWORD}
        if workers:
            apt_install(container, *stack.WORKER_PACKAGES)
            answers.update(stack.WORKER_ANSWERS)
        preseed(container, answers)
        result = install(container, deb_path)
        assert f"matrix-stack: created the administrator @admin:{SERVER}" in (
            result.stdout + result.stderr
        )
        # Tests only: cheap hashing and no login rate limit, so that hundreds of accounts
        # and repeated logins take seconds. Never in the package.
        container.write_file(
            "/etc/matrix-synapse/conf.d/90-test-only.yaml",
            "bcrypt_rounds: 4\n"
            "rc_login:\n"
            "  address: {per_second: 1000, burst_count: 1000}\n"
            "  account: {per_second: 1000, burst_count: 1000}\n"
            "  failed_attempts: {per_second: 1000, burst_count: 1000}\n",
        )
        # With workers, every Synapse process reads it (they are PartOf= the target).
        container.run(["systemctl", "restart",
                       "matrix-synapse.target" if workers else "matrix-synapse"])
        stack.wait_for_client_api(container)
        if workers:
            stack.wait_for_workers(container)
        # A fresh Synapse builds indexes in the background for a while; some admin API calls
        # (re-activation on SQLite) fail until they are done, as on any new server.
        container.run(["matrix-stack-admin", "user", "list"])
        token = container.read_file("/var/lib/matrix-stack/admin-token").strip()
        wait_for(
            lambda: not admin_api("GET", "/_synapse/admin/v1/background_updates/status",
                                  token=token)[1].get("current_updates"),
            timeout=300, interval=3, what="Synapse's background updates to finish",
        )
        with host_resolves(SERVER):
            yield container
    finally:
        container.close()


def admin(ct: Container, *args: str, password: str | None = None, check: bool = True) -> Any:
    """Run matrix-stack-admin with a password on standard input (never on argv)."""
    argv = ["matrix-stack-admin", *args]
    if password is not None:
        argv += ["--password-file", "-"]
    return ct.run(argv, input=password, check=check)


def client_api(ct: Container, method: str, path: str, body: Any = None,
               token: str | None = None) -> tuple[int, Any]:
    """One client API request, through Apache on 443 as a client's; return the status and
    the JSON body, errors included."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = stack.https(ct, path, method=method, body=body, headers=headers)
    return response.status, response.json() if response.body else {}


def login(ct: Container, user: str, password: str) -> tuple[int, str | None]:
    status, body = client_api(ct, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    })
    return status, body.get("access_token")


def whoami(ct: Container, token: str) -> int:
    return int(client_api(ct, "GET", "/_matrix/client/v3/account/whoami", token=token)[0])


def nio_login_and_send(ct: Container, user: str, password: str) -> str:
    """Log in with matrix-nio over HTTPS through Apache, make a room, send a message."""
    import nio  # type: ignore[import-untyped]

    async def scenario() -> str:
        context = ssl.create_default_context(cafile=str(ct.path(stack.SELF_SIGNED_CERT)))
        client = nio.AsyncClient(f"https://{SERVER}", user, ssl=context)
        try:
            response = await client.login(password)
            assert isinstance(response, nio.LoginResponse), response
            room = await client.room_create(name="matrix-stack test")
            assert isinstance(room, nio.RoomCreateResponse), room
            sent = await client.room_send(
                room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello, Debian"}
            )
            assert isinstance(sent, nio.RoomSendResponse), sent
            return str(sent.event_id)
        finally:
            await client.close()

    return asyncio.run(scenario())


def test_preseeded_admin_exists_and_its_password_left_debconf(ct: Container) -> None:
    status, token = login(ct, "admin", ADMIN_PASSWORD)
    assert status == 200 and token
    status, body = admin_api("GET", f"/_synapse/admin/v2/users/@admin:{SERVER}", token=token)
    assert status == 200 and body["admin"] is True
    leftovers = ct.run(["grep", "-rl", ADMIN_PASSWORD, "/var/cache/debconf"], check=False)
    assert leftovers.stdout == ""
    shown = ct.run(["debconf-show", "matrix-stack"]).stdout
    assert ADMIN_PASSWORD not in shown


def test_added_user_and_admin_log_in_with_a_real_client_and_send(ct: Container) -> None:
    added = admin(ct, "user", "add", "alice", password="alice-pw-1")
    assert added.stdout == f"created @alice:{SERVER}\n"
    added = admin(ct, "user", "add", f"@bob:{SERVER}", "--admin", password="bob-pw-1")
    assert added.stdout == f"created @bob:{SERVER} (administrator)\n"
    assert nio_login_and_send(ct, "alice", "alice-pw-1").startswith("$")
    assert nio_login_and_send(ct, "bob", "bob-pw-1").startswith("$")
    listed = json.loads(admin(ct, "user", "list", "--json").stdout)
    by_name = {row["user_id"]: row for row in listed}
    assert by_name[f"@bob:{SERVER}"]["admin"] is True
    assert by_name[f"@alice:{SERVER}"]["admin"] is False


def test_adding_an_existing_user_fails_unless_exists_ok(ct: Container) -> None:
    result = admin(ct, "user", "add", "alice", password="other", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"matrix-stack-admin: @alice:{SERVER} already exists (--exists-ok accepts that; "
        "passwd changes its password)\n"
    )
    result = admin(ct, "user", "add", "alice", "--exists-ok", password="other")
    assert result.stdout == f"@alice:{SERVER} already exists: left unchanged\n"
    assert login(ct, "alice", "alice-pw-1")[0] == 200


def test_user_of_another_server_is_refused_in_one_line(ct: Container) -> None:
    result = admin(ct, "passwd", "@carol:elsewhere.example", password="x", check=False)
    assert result.returncode == 2
    assert result.stderr == (
        f"matrix-stack-admin: @carol:elsewhere.example is not a user of this server ({SERVER})\n"
    )


def test_online_passwd_ends_sessions_and_changes_the_password(ct: Container) -> None:
    _, old_token = login(ct, "alice", "alice-pw-1")
    assert old_token and whoami(ct, old_token) == 200
    result = admin(ct, "passwd", "alice", password="alice-pw-2")
    assert result.stdout == f"password of @alice:{SERVER} changed; every session ended\n"
    assert whoami(ct, old_token) == 401
    assert login(ct, "alice", "alice-pw-2")[0] == 200
    assert login(ct, "alice", "alice-pw-1")[0] == 403


def test_online_passwd_can_keep_sessions(ct: Container) -> None:
    _, token = login(ct, "alice", "alice-pw-2")
    assert token
    admin(ct, "passwd", "alice", "--keep-sessions", password="alice-pw-3")
    assert whoami(ct, token) == 200
    assert login(ct, "alice", "alice-pw-3")[0] == 200


def test_offline_passwd_is_refused_while_synapse_runs(ct: Container) -> None:
    result = admin(ct, "passwd", "alice", "--offline", password="x", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("matrix-stack-admin: Synapse is running: stop it first")


def synapse_unit(ct: Container) -> str:
    """Return the unit that stops and starts every Synapse process: the target with workers."""
    wants = ct.path("/etc/systemd/system/matrix-synapse.target.wants")
    return ("matrix-synapse.target" if list(wants.glob("matrix-synapse-worker@*"))
            else "matrix-synapse")


def test_offline_passwd_with_synapse_stopped_changes_password_and_ends_sessions(
    ct: Container,
) -> None:
    _, old_token = login(ct, "alice", "alice-pw-3")
    assert old_token
    unit = synapse_unit(ct)
    ct.run(["systemctl", "stop", "matrix-synapse"])
    try:
        if unit != "matrix-synapse":
            # The main process alone stopped: the workers run on, with their caches.
            refused = admin(ct, "passwd", "alice", password="x", check=False)
            assert refused.stderr == (
                "matrix-stack-admin: Synapse's workers run without its main process: stop them "
                "too (systemctl stop matrix-synapse.target), or start it again to change the "
                "password through Synapse\n"), refused.stderr
            ct.run(["systemctl", "stop", unit])
        result = admin(ct, "passwd", "alice", password="pässwörd-ﬁ-4")
        assert result.stdout.startswith(f"password of @alice:{SERVER} changed offline; ")
        assert f"start Synapse again: systemctl start {unit}\n" in result.stdout
    finally:
        ct.run(["systemctl", "start", unit])
    stack.wait_for_client_api(ct)
    if unit != "matrix-synapse":
        stack.wait_for_workers(ct)
    assert login(ct, "alice", "pässwörd-fi-4")[0] == 200  # NFKC: ﬁ is fi, as Synapse hashes
    assert login(ct, "alice", "alice-pw-3")[0] == 403
    assert whoami(ct, old_token) == 401


def test_deactivated_user_cannot_log_in(ct: Container) -> None:
    admin(ct, "user", "add", "dave", password="dave-pw")
    assert login(ct, "dave", "dave-pw")[0] == 200
    refused = admin(ct, "user", "deactivate", "dave", check=False)
    assert refused.returncode == 1
    assert refused.stderr == "matrix-stack-admin: no terminal to confirm on: add --yes\n"
    result = admin(ct, "user", "deactivate", "dave", "--yes")
    assert result.stdout == f"deactivated @dave:{SERVER}\n"
    assert login(ct, "dave", "dave-pw")[0] == 403
    listed = [row["user_id"] for row in json.loads(admin(ct, "user", "list", "--json").stdout)]
    assert f"@dave:{SERVER}" not in listed
    everyone = json.loads(admin(ct, "user", "list", "--json", "--all").stdout)
    assert {"user_id": f"@dave:{SERVER}", "deactivated": True}.items() <= next(
        row for row in everyone if row["user_id"] == f"@dave:{SERVER}"
    ).items()
    # The names bash completion offers: active accounts only, readable by root alone.
    names = ct.read_file("/var/lib/matrix-stack/user-names").split()
    assert "dave" not in names and "admin" in names and "matrix-stack" not in names
    assert stack.stat(ct, "/var/lib/matrix-stack/user-names") == "root:root 600"


def admin_flag(ct: Container, user: str) -> bool:
    token = ct.read_file("/var/lib/matrix-stack/admin-token").strip()
    status, body = admin_api("GET", f"/_synapse/admin/v2/users/@{user}:{SERVER}", token=token)
    assert status == 200, body
    return bool(body["admin"])


def test_user_modify_grants_and_removes_admin_but_never_the_last(ct: Container) -> None:
    admin(ct, "user", "modify", "alice", "--admin")
    assert admin_flag(ct, "alice") is True
    admin(ct, "user", "modify", "alice", "--no-admin")
    assert admin_flag(ct, "alice") is False
    admin(ct, "user", "modify", "bob", "--no-admin")
    refused = admin(ct, "user", "modify", "admin", "--no-admin", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"matrix-stack-admin: @admin:{SERVER} is the last administrator: make another one "
        "first (matrix-stack-admin user modify NAME --admin)\n"
    )
    assert admin_flag(ct, "admin") is True
    result = admin(ct, "user", "modify", "alice", "--displayname", "Alice A.")
    assert result.stdout == f"modified @alice:{SERVER}: displayname 'Alice A.'\n"


def test_reactivated_user_logs_in_with_the_new_password(ct: Container) -> None:
    assert login(ct, "dave", "dave-pw")[0] == 403  # deactivated by an earlier test
    result = admin(ct, "user", "modify", "dave", "--reactivate", password="dave-pw-2")
    assert result.stdout == f"modified @dave:{SERVER}: re-activated, new password\n"
    assert login(ct, "dave", "dave-pw-2")[0] == 200


def test_user_show_and_logout_one_device_then_all(ct: Container) -> None:
    admin(ct, "user", "add", "erin", password="erin-pw")
    first = client_api(ct, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "erin"},
        "password": "erin-pw", "initial_device_display_name": "laptop"})[1]
    second = client_api(ct, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "erin"},
        "password": "erin-pw", "initial_device_display_name": "phone"})[1]
    for session in (first, second):
        assert whoami(ct, session["access_token"]) == 200

    def shown_with_addresses() -> Any:
        # Synapse writes each device's last address in batches, a few seconds late.
        shown = json.loads(admin(ct, "user", "show", "erin", "--json").stdout)
        return shown if all(d["last_ip"] for d in shown["devices"]) else None

    shown = wait_for(shown_with_addresses, timeout=30, what="erin's devices with addresses")
    assert shown["device_count"] == 2
    assert {d["device_id"]: d["name"] for d in shown["devices"]} == {
        first["device_id"]: "laptop", second["device_id"]: "phone"}
    assert {d["last_ip"] for d in shown["devices"]} == {"127.0.0.1"}
    text = admin(ct, "user", "show", "erin").stdout
    assert "devices:      2" in text and "laptop" in text
    result = admin(ct, "user", "logout", "erin", "--device", first["device_id"])
    assert result.stdout == f"ended 1 session(s) of @erin:{SERVER}\n"
    assert whoami(ct, first["access_token"]) == 401
    assert whoami(ct, second["access_token"]) == 200
    admin(ct, "user", "logout", "erin")
    assert whoami(ct, second["access_token"]) == 401
    assert json.loads(admin(ct, "user", "show", "erin", "--json").stdout)["device_count"] == 0


def register_with_token(ct: Container, user: str, token: str) -> int:
    """Register through the client API's interactive auth, with a registration token."""
    body: dict[str, Any] = {"username": user, "password": f"{user}-pw"}
    status, reply = client_api(ct, "POST", "/_matrix/client/v3/register", body)
    for _ in range(3):
        if status != 401:
            return status
        session = reply["session"]
        done = set(reply.get("completed", []))
        stages = next(flow["stages"] for flow in reply["flows"]
                      if "m.login.registration_token" in flow["stages"])
        stage = next(stage for stage in stages if stage not in done)
        auth: dict[str, Any] = {"type": stage, "session": session}
        if stage == "m.login.registration_token":
            auth["token"] = token
        status, reply = client_api(ct, "POST", "/_matrix/client/v3/register",
                                   {**body, "auth": auth})
    return status


def test_registration_tokens_create_accounts_only_as_allowed(ct: Container) -> None:
    refused = admin(ct, "token", "new", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "matrix-stack-admin: registration is 'disabled', so nobody is asked for a token; "
        "switch to 'token' with: dpkg-reconfigure matrix-stack\n"
    )
    stack.set_stack_value(ct, "registration", "token")
    ct.run(["matrix-stack-admin", "apply"])
    stack.wait_for_client_api(ct)
    made = admin(ct, "token", "new", "--uses", "1", "--expires", "7d").stdout.splitlines()
    token = made[0]
    assert made[1] == f"register at: https://element.{SERVER}/#/register"
    assert register_with_token(ct, "frank", token) == 200
    assert register_with_token(ct, "grace", token) == 401
    listed = json.loads(admin(ct, "token", "list", "--json").stdout)
    row = next(row for row in listed if row["token"] == token)
    assert row["uses_allowed"] == 1 and row["uses_left"] == 0 and row["expires"]
    spare = admin(ct, "token", "new").stdout.splitlines()[0]
    assert admin(ct, "token", "revoke", spare).stdout == "token revoked\n"
    assert register_with_token(ct, "heidi", spare) == 401
    assert spare not in admin(ct, "token", "list").stdout
    stack.set_stack_value(ct, "registration", "disabled")
    ct.run(["matrix-stack-admin", "apply"])
    stack.wait_for_client_api(ct)


def test_service_account_is_hidden_and_protected(ct: Container) -> None:
    listed = [row["user_id"] for row in json.loads(admin(ct, "user", "list", "--json").stdout)]
    assert f"@matrix-stack:{SERVER}" not in listed
    result = admin(ct, "user", "deactivate", "matrix-stack", "--yes", check=False)
    assert result.returncode == 1
    assert "service account" in result.stderr
    assert ct.run(["stat", "-c", "%U %a", "/var/lib/matrix-stack/admin-token"]).stdout == (
        "root 600\n"
    )


def test_user_list_returns_every_page(ct: Container) -> None:
    token = ct.read_file("/var/lib/matrix-stack/admin-token").strip()
    for index in range(260):
        user_id = urllib.parse.quote(f"@bulk{index:03d}:{SERVER}", safe="")
        status, _ = admin_api("PUT", f"/_synapse/admin/v2/users/{user_id}",
                              {"password": f"bulk-{index}"}, token=token)
        assert status in (200, 201)
    listed = json.loads(admin(ct, "user", "list", "--json").stdout)
    bulk = [row["user_id"] for row in listed if row["user_id"].startswith("@bulk")]
    assert bulk == [f"@bulk{index:03d}:{SERVER}" for index in range(260)]
    table = admin(ct, "user", "list").stdout.splitlines()
    assert table[0].split() == ["USER", "ADMIN", "DEACTIVATED", "CREATED", "LAST", "SEEN"]
    assert len(table) == 1 + len(listed)


def test_passwords_never_reach_argv_or_the_journal(ct: Container) -> None:
    journal = ct.run(["journalctl", "--no-pager", "-o", "cat"]).stdout
    for secret in (ADMIN_PASSWORD, "alice-pw-1", "bob-pw-1", "dave-pw"):
        assert secret not in journal


def test_with_workers_the_client_worker_served_the_client_requests(ct: Container) -> None:
    if not list(ct.path("/etc/matrix-synapse/workers").glob("*.yaml")):
        pytest.skip("the monolith run has no workers")
    served = stack.journal(ct, "matrix-synapse-worker@client*")
    for request in ('"POST /_matrix/client/v3/login HTTP/1.1"',
                    '"GET /_matrix/client/v3/account/whoami HTTP/1.1"',
                    '"POST /_matrix/client/v3/register HTTP/1.1"'):
        assert request in served, request
