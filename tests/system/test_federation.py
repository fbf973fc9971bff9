"""Federation between booted stacks on a private bridge (tests/system/federation_testbed.py).

Two runs of the same tests. Monolith (SQLite, one Synapse process): three stacks; A and B
allow each other; C allows A, but A does not allow C. Workers (PostgreSQL, workers: auto;
matrix-synapse-py3 only): A and B alone, the tests that need C skipped, and the worker logs
show that each stack sent through its federation sender and received through its federation
reader. The tests share the stacks in file order; switching A's federation off comes last.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.system.federation_testbed import (
    ADDRESSES,
    Stack,
    arrives,
    bodies,
    federating_stacks,
    log,
    quote,
    send,
    sync,
)
from tests.system.stack import skip_unless_workers_run, unit_runs
from tests.system.testbed import Target, wait_for

pytestmark = pytest.mark.system

NEGATIVE_WAIT = 8.0


@pytest.fixture(scope="module", params=["monolith", "workers"])
def stacks(request: pytest.FixtureRequest, target: Target, base_tarball: Path, deb_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    workers = request.param == "workers"
    if workers:
        skip_unless_workers_run(target)
    letters = ("a", "b") if workers else ("a", "b", "c")
    with federating_stacks(letters, base_tarball, deb_path,
                           tmp_path_factory.mktemp(f"federation-pki-{request.param}"),
                           workers=workers) as made:
        yield made


def stack_c(stacks: dict[str, Stack]) -> Stack:
    """Return stack C, or skip: the workers run boots A and B only."""
    if "c" not in stacks:
        pytest.skip("needs stack C, which only the monolith run boots")
    return stacks["c"]


@pytest.fixture(scope="module")
def room(stacks: dict[str, Stack]) -> dict[str, str]:
    """A room on A that alice made and bob (of B) joined; returns ids and tokens."""
    a, b = stacks["a"], stacks["b"]
    alice, bob = a.login("alice"), b.login("bob")
    status, body = a.api("POST", "/_matrix/client/v3/createRoom", {
        "preset": "private_chat", "name": "federation test",
        "invite": ["@bob:b.example.test"],
    }, token=alice)
    assert status == 200, body
    room_id = body["room_id"]
    started = time.monotonic()
    wait_for(lambda: room_id in sync(b, bob).get("rooms", {}).get("invite", {}),
             timeout=60, what="bob on B to see the invitation from A")
    log(f"invitation A -> B arrived in {time.monotonic() - started:.1f} s")
    status, body = b.api("POST", f"/_matrix/client/v3/join/{quote(room_id)}"
                         "?server_name=a.example.test", {}, token=bob)
    assert status == 200, body
    return {"room_id": room_id, "alice": alice, "bob": bob}


def check_lines(stack: Stack, server: str) -> tuple[int, list[str]]:
    result = stack.admin("federation", "check", server, check=False)
    log(f"federation check {server} on {stack.name} (exit {result.returncode}):\n"
        + result.stdout.rstrip())
    return result.returncode, result.stdout.splitlines()


def test_federation_check_from_a_passes_every_line_for_b(stacks: dict[str, Stack]) -> None:
    started = time.monotonic()
    code, lines = check_lines(stacks["a"], "b.example.test")
    log(f"federation check b.example.test took {time.monotonic() - started:.1f} s")

    assert code == 0, lines
    checks = lines[:-1]
    assert all(line.startswith("✓ ") for line in checks), lines
    b = ADDRESSES["b"]
    assert checks[0] == "✓ well-known: delegates to b.example.test:8448"
    assert checks[1] == "✓ srv: not used: b.example.test:8448 has an explicit port"
    assert checks[2] == f"✓ dns: b.example.test -> {b}"
    assert checks[3].startswith(f"✓ {b}:8448 tls: certificate valid for b.example.test, "
                                "issued by matrix-stack federation test CA, until ")
    assert checks[4] == f"✓ {b}:8448 keys: server_name is b.example.test"
    assert any(line.startswith(f"✓ {b}:8448 keys: ed25519:") for line in checks)
    assert checks[-2].startswith(f"✓ {b}:8448 version: federation API answers: Synapse ")
    assert checks[-1] == "✓ allow-list: b.example.test is on this server's allow-list"
    assert lines[-1] == "b.example.test: every check passed"

    report = json.loads(stacks["a"].admin("federation", "check", "b.example.test",
                                          "--json").stdout)
    assert report["ok"] is True and len(report["checks"]) == len(checks)


def test_messages_from_a_arrive_on_b_and_back(stacks: dict[str, Stack],
                                              room: dict[str, str]) -> None:
    a, b = stacks["a"], stacks["b"]
    send(a, room["alice"], room["room_id"], "hello B, from A")
    delay = arrives(b, room["bob"], room["room_id"], "hello B, from A")
    log(f"A -> B message arrived in {delay:.1f} s")
    send(b, room["bob"], room["room_id"], "hello A, from B")
    delay = arrives(a, room["alice"], room["room_id"], "hello A, from B")
    log(f"B -> A message arrived in {delay:.1f} s")


SEND_PATH = "/_matrix/federation/v1/send/"


def matching(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


def tail(text: str, count: int = 15) -> str:
    return "\n".join(text.splitlines()[-count:])


def test_each_stack_sends_through_its_federation_sender_and_receives_through_its_reader(
    stacks: dict[str, Stack], room: dict[str, str]
) -> None:
    if not stacks["a"].workers:
        pytest.skip("the monolith run has no workers")
    # The messages of the test above went A -> B and B -> A as transactions: the sender's
    # federation sender logs each one's answer by its id, the receiver's federation reader
    # serves the PUT to /send/ID (Synapse's access log). Both name the same transaction.
    for sender, receiver in ((stacks["a"], stacks["b"]), (stacks["b"], stacks["a"])):
        sent = rf"TX \[{re.escape(receiver.name)}\] \{{(\d+)\}} got 200 response"
        received = (rf"\{{{re.escape(sender.name)}\}} Processed request: .* 200!? "
                    rf'"PUT {SEND_PATH}(\d+) HTTP/1\.1"')
        deadline = time.monotonic() + 30
        while True:
            sender_log = sender.worker_log("federation_sender")
            reader_log = receiver.worker_log("federation_reader")
            both = set(re.findall(sent, sender_log)) & set(re.findall(received, reader_log))
            if both or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert both, (
            f"no transaction from {sender.name} to {receiver.name} in both {sender.name}'s "
            f"federation sender's journal:\n{tail(sender_log)}\nand {receiver.name}'s "
            f"federation reader's journal:\n{tail(reader_log)}")
        transaction = min(both)
        for who, text, pattern in ((f"{sender.name} federation sender", sender_log, sent),
                                   (f"{receiver.name} federation reader", reader_log, received)):
            line = next(line for line in matching(text, pattern) if transaction in line)
            log(f"{who}: {line}")
    # Nor did the main processes do either (their file: log.yaml flushes at least every 5 s).
    time.sleep(6)
    for one in (stacks["a"], stacks["b"]):
        main_log = one.main_log()
        assert not matching(main_log, rf"TX \[|{SEND_PATH}"), f"{one.name}'s main process"


def test_encoded_slashes_reach_synapse_unchanged_on_443_and_8448(
    stacks: dict[str, Stack], room: dict[str, str]
) -> None:
    a, b = stacks["a"], stacks["b"]
    alias = quote("#team/ops:a.example.test")
    status, body = a.api("PUT", f"/_matrix/client/v3/directory/room/{alias}",
                         {"room_id": room["room_id"]}, token=room["alice"])
    assert status == 200, body
    status, body = a.api("GET", f"/_matrix/client/v3/directory/room/{alias}")
    assert (status, body.get("room_id")) == (200, room["room_id"])
    # B looks the alias up from A over federation.
    status, body = b.api("GET", f"/_matrix/client/v3/directory/room/{alias}", token=room["bob"])
    assert (status, body.get("room_id")) == (200, room["room_id"])

    # Synapse itself answers (JSON), and logs the path with %2F as sent.
    client_path = "/_matrix/client/v3/directory/room/%23probe%2Fslash%3Aa.example.test"
    status, body = a.api("GET", client_path)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    federation_path = ("/_matrix/federation/v1/make_join/%21probe%2Fslash%3Aa.example.test/"
                       "%40x%2Fy%3Ab.example.test")
    status, body = a.api("GET", federation_path, port=8448)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    # matrix-synapse-py3's log.yaml buffers INFO lines for a few seconds before writing them.
    wanted = (f'"GET {client_path} HTTP/1.1"', f'"GET {federation_path} HTTP/1.1"')
    wait_for(lambda: all(line in a.synapse_log() for line in wanted), timeout=30,
             what="both requests in Synapse's log, paths as sent")

    # Signed federation requests whose path holds %2F: @alice/ops of A joins a room of B that
    # A is not in yet, so A asks B's 8448 for /make_join/ROOM/%40alice%2Fops%3Aa.example.test.
    status, body = b.api("POST", "/_matrix/client/v3/createRoom", {
        "preset": "private_chat", "invite": ["@alice/ops:a.example.test"],
    }, token=room["bob"])
    assert status == 200, body
    room_on_b = body["room_id"]
    ops = a.login("alice/ops")
    wait_for(lambda: room_on_b in sync(a, ops).get("rooms", {}).get("invite", {}),
             timeout=60, what="@alice/ops to see the invitation from B")
    status, body = a.api("POST", f"/_matrix/client/v3/join/{quote(room_on_b)}"
                         "?server_name=b.example.test", {}, token=ops)
    assert status == 200, body
    make_join = f"/_matrix/federation/v1/make_join/{quote(room_on_b)}/"
    wait_for(lambda: f"{make_join}%40alice%2Fops%3Aa.example.test?" in b.synapse_log(),
             timeout=30, what="B's log of the signed make_join with %2F in its path")
    send(a, ops, room_on_b, "from a user with a slash")
    arrives(b, room["bob"], room_on_b, "from a user with a slash")


def test_c_is_refused_by_a_both_ways(stacks: dict[str, Stack], room: dict[str, str]) -> None:
    a, c = stacks["a"], stack_c(stacks)
    status, body = a.api("POST", f"/_matrix/client/v3/rooms/{quote(room['room_id'])}/invite",
                         {"user_id": "@carol:c.example.test"}, token=room["alice"])
    assert status == 403, body
    assert "Federation denied with c.example.test" in body["error"]

    carol = c.login("carol")
    status, body = c.api("POST", f"/_matrix/client/v3/join/{quote(room['room_id'])}"
                         "?server_name=a.example.test", {}, token=carol)
    assert status != 200, body
    wait_for(lambda: "Federation denied with c.example.test" in a.synapse_log(), timeout=30,
             what="A to log that it refused C")


def test_federation_check_against_wrong_certificates_fails_with_clear_lines(
    stacks: dict[str, Stack],
) -> None:
    a = stacks["a"]
    stack_c(stacks)
    code, lines = check_lines(a, "c.example.test")
    c = ADDRESSES["c"]
    assert code == 1
    assert lines[0].startswith("! well-known: https://c.example.test/.well-known/matrix/server "
                               "unreachable (certificate not trusted: self-signed certificate)")
    assert (f"✗ {c}:8448 tls: self-signed certificate (c.example.test, element.c.example.test): "
            "other servers refuse it; use one from a CA (tls: acme, or tls: files)") in lines
    assert ("✗ allow-list: c.example.test is not on this server's allow-list; add it with: "
            "matrix-stack-admin federation allow c.example.test") in lines
    assert lines[-1].startswith("c.example.test: 2 of ")

    code, lines = check_lines(a, "wrong.example.test")
    b = ADDRESSES["b"]
    assert code == 1
    failed = [line for line in lines if line.startswith("✗")]
    assert failed == [
        f"✗ {b}:8448 tls: not valid for wrong.example.test: the certificate names "
        "b.example.test, element.b.example.test",
        f"✗ {b}:8448 keys: server_name is 'b.example.test', not 'wrong.example.test'",
        "✗ allow-list: wrong.example.test is not on this server's allow-list; add it with: "
        "matrix-stack-admin federation allow wrong.example.test",
    ], lines


def test_list_key_servers_and_proxy_config_on_a_real_stack(stacks: dict[str, Stack]) -> None:
    a = stacks["a"]
    assert a.admin("federation", "list").stdout.splitlines() == [
        "mode: allow-list", "  b.example.test"]
    assert a.admin("federation", "key-servers", "--json").stdout.strip() == "[]"
    result = a.admin("proxy-config", "traefik", "--backend", "10.0.0.5")
    assert "behind-proxy" in result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["http"]["routers"]["matrix-stack"]["rule"] == (
        "Host(`a.example.test`) || Host(`element.a.example.test`)")


def test_federation_mode_off_on_a_stops_federation_with_b(
    stacks: dict[str, Stack], room: dict[str, str]
) -> None:
    a, b = stacks["a"], stacks["b"]
    with unit_runs(a.container, ("matrix-synapse", "apache2")) as changed:
        started = time.monotonic()
        result = a.admin("federation", "mode", "off")
        log(f"federation mode off took {time.monotonic() - started:.1f} s")
    assert result.stdout.splitlines()[0] == "federation: allow-list -> off"
    assert changed == {"matrix-synapse": True, "apache2": False}
    # Quoted: YAML 1.1 reads a bare off as false (the config script strips the quotes).
    assert "\nfederation: 'off'\n" in a.container.read_file("/etc/matrix-stack/stack.yaml")
    element = json.loads(a.container.read_file("/etc/matrix-stack/element/config.json"))
    assert element["default_federate"] is False
    wait_for(lambda: a.api("GET", "/_matrix/client/versions")[0] == 200, timeout=120,
             what="A's Synapse to answer again")

    status, body = a.api("POST", f"/_matrix/client/v3/rooms/{quote(room['room_id'])}/invite",
                         {"user_id": "@nobody:b.example.test"}, token=room["alice"])
    assert status == 403 and "Federation denied with b.example.test" in body["error"], body
    send(a, room["alice"], room["room_id"], "A after off")
    send(b, room["bob"], room["room_id"], "B after off")
    time.sleep(NEGATIVE_WAIT)
    assert "A after off" not in bodies(b, room["bob"], room["room_id"])
    assert "B after off" not in bodies(a, room["alice"], room["room_id"])

    code, lines = check_lines(a, "b.example.test")
    assert code == 1
    assert lines[-2] == ("✗ allow-list: federation is off here (empty "
                         "federation_domain_whitelist); run: matrix-stack-admin federation "
                         "mode allow-list")
