"""Sync sticky by user in Apache: the rendered mod_rewrite rules, run by a small interpreter of
the few constructs they use, send the same token to the same sync worker every time, and their
MD5 partitions share every token among the sync workers."""

from __future__ import annotations

import hashlib
import re
import secrets
import shlex
from base64 import urlsafe_b64encode

import pytest

from matrix_stack.base.paths import APACHE_SITE_PATH
from matrix_stack.base.secrets import Secrets
from matrix_stack.core.host import Facts
from matrix_stack.core.render import render_all
from matrix_stack.core.settings import from_mapping
from matrix_stack.core.worker_routes import HEX_DIGITS, hex_partitions

SECRETS = Secrets(turn_shared_secret="test-turn-secret", redis_password="test-redis-password")
SYNC = "/_matrix/client/v3/sync"


def site(workers: str) -> str:
    settings = from_mapping({"server_name": "matrix.example.org", "database": "postgresql",
                             "workers": workers})
    files = render_all(settings, SECRETS, Facts(cpu_count=2))
    return next(spec.text for spec in files if spec.path == APACHE_SITE_PATH)


def rewrite_rules(text: str) -> list[tuple[list[list[str]], list[str]]]:
    """Return the first vhost's server-context RewriteRules, each with its RewriteConds."""
    body = text.split("<VirtualHost *:443>", 1)[1].split("</VirtualHost>", 1)[0]
    body = body.split("<Directory", 1)[0]  # per-directory rules (Element's) run elsewhere
    rules, conditions = [], []
    for line in body.splitlines():
        if not line.lstrip().startswith("Rewrite"):
            continue
        words = shlex.split(line.replace("\\", "\\\\"))
        if words[:1] == ["RewriteCond"]:
            conditions.append(words[1:])
        elif words[:1] == ["RewriteRule"]:
            rules.append((conditions, words[1:]))
            conditions = []
    return rules


def route(text: str, path: str, authorization: str = "", query: str = "") -> str | None:
    """Return where the rules proxy the request ([P] target), or None (on to ProxyPass)."""
    env: dict[str, str] = {}
    rules = rewrite_rules(text)
    index = 0
    while index < len(rules):
        conditions, (pattern, target, *flags) = rules[index]
        index += 1
        negated = pattern.startswith("!")
        match = re.search(pattern.lstrip("!"), path)
        if bool(match) == negated:
            continue
        captured: tuple[str, ...] = ()
        if not all(_condition(words, env, authorization, query) for words in conditions):
            continue
        for words in conditions:
            found = _condition(words, env, authorization, query)
            captured = found.groups() if isinstance(found, re.Match) else captured
        flag = flags[0].strip("[]") if flags else ""
        if flag.startswith("E="):
            name, _, value = flag[2:].partition(":")
            env[name] = value.replace("%1", captured[0])
        elif flag.startswith("S="):
            index += int(flag[2:])
        elif flag == "P":
            assert match is not None
            return target.replace("$0", match.group(0))
    return None


def _condition(words: list[str], env: dict[str, str], authorization: str,
               query: str) -> re.Match[str] | bool | None:
    if words[0] == "expr":
        expression = re.fullmatch(r"md5\(reqenv\('(\w+)'\)\) =~ /(.*)/", words[1])
        assert expression is not None
        name, digits = expression.groups()
        return re.match(digits, hashlib.md5(env.get(name, "").encode()).hexdigest()) is not None
    value = {"%{QUERY_STRING}": query, "%{HTTP:Authorization}": authorization}.get(words[0])
    if value is None:
        variable = re.fullmatch(r"%\{ENV:(\w+)\}", words[0])
        assert variable is not None
        value = env.get(variable.group(1), "")
    return re.search(words[1], value)


def syt_token(localpart: str) -> str:
    """Return an access token in Synapse's syt_ form for a user (random device part)."""
    encoded = urlsafe_b64encode(localpart.encode()).decode().rstrip("=")
    return f"syt_{encoded}_{secrets.token_urlsafe(15)}_{secrets.token_hex(3)}"


TWO = site("sync=2,client=1,media=1")
WORKERS = ("http://127.0.0.1:8110", "http://127.0.0.1:8111")


def test_same_token_always_goes_to_the_same_sync_worker() -> None:
    for _ in range(50):
        token = secrets.token_urlsafe(24)
        first = route(TWO, SYNC, f"Bearer {token}", "timeout=30000")

        assert first in {worker + SYNC for worker in WORKERS}
        assert route(TWO, SYNC, f"Bearer {token}", "since=s72_1&timeout=30000") == first
        assert route(TWO, SYNC, "", f"since=s7&access_token={token}") == first
        assert route(TWO, "/_matrix/client/v3/events", f"Bearer {token}") == (
            first.replace(SYNC, "/_matrix/client/v3/events"))


def test_every_device_of_a_user_syncs_on_the_same_worker() -> None:
    for index in range(50):
        user = f"user{index}"
        targets = {route(TWO, SYNC, f"Bearer {syt_token(user)}") for _ in range(5)}

        assert len(targets) == 1


def test_tokens_are_shared_among_all_sync_workers() -> None:
    targets = [route(TWO, SYNC, f"Bearer {syt_token(f'user{index}')}") for index in range(200)]

    assert {target.removesuffix(SYNC) for target in targets if target} == set(WORKERS)
    assert None not in targets


def test_a_sync_without_a_token_still_goes_to_a_sync_worker() -> None:
    assert route(TWO, SYNC) == WORKERS[-1] + SYNC


def test_other_paths_are_left_to_proxy_pass() -> None:
    assert route(TWO, "/_matrix/client/v3/rooms/!a:example.org/messages", "Bearer t") is None
    assert route(TWO, "/_matrix/client/v3/syncx", "Bearer t") is None
    assert 'ProxyPassMatch "^/_matrix/media/" "balancer://synapse-media" nocanon' in TWO


def test_one_sync_worker_is_a_balancer_with_no_rewrite() -> None:
    one = site("sync=1,client=1")

    assert "MATRIX_STACK_SYNC_KEY" not in one
    assert ('ProxyPassMatch "^/_matrix/client/(r0|v3)/sync(\\?|$)" '
            '"balancer://synapse-sync" nocanon') in one


def test_sync_rules_are_in_every_vhost_that_proxies_synapse() -> None:
    vhosts = re.findall(r"<VirtualHost \*:(\d+)>(.*?)</VirtualHost>", TWO, re.S)
    proxied = [body for _port, body in vhosts if "ProxyPass /_matrix" in body]

    assert len(proxied) == 2
    for body in proxied:
        assert "RewriteRule ^/_matrix/.* http://127.0.0.1:8111$0 [P]" in body
        assert "balancer://synapse-sync" not in body


@pytest.mark.parametrize("count", range(1, 17))
def test_hex_partitions_take_every_first_digit_once(count: int) -> None:
    partitions = hex_partitions(count)
    owners = [[index for index, digits in enumerate(partitions) if re.fullmatch(digits, digit)]
              for digit in HEX_DIGITS]

    assert len(partitions) == count
    assert all(len(found) == 1 for found in owners)
    assert [found[0] for found in owners] == sorted(found[0] for found in owners)
    sizes = [sum(1 for found in owners if found == [index]) for index in range(count)]
    assert max(sizes) - min(sizes) <= 1


def test_hex_partitions_refuse_more_workers_than_digits() -> None:
    with pytest.raises(ValueError, match="17 workers"):
        hex_partitions(17)


def test_sixteen_sync_workers_each_take_one_digit() -> None:
    text = site("sync=16")
    tokens = [secrets.token_urlsafe(24) for _ in range(400)]
    targets = {route(text, SYNC, f"Bearer {token}") for token in tokens}

    assert len(targets) == 16


@pytest.mark.parametrize(
    ("authorization", "query", "port"),
    [
        ("Bearer tokA", "", 8111), ("Bearer tokB", "", 8112), ("Bearer tokC", "", 8110),
        ("", "access_token=tokD", 8112), ("", "since=s1&access_token=tokE", 8110),
        ("Bearer syt_YWxpY2U_aaa_111", "", 8112), ("Bearer syt_YWxpY2U_bbb_222", "", 8112),
        ("Bearer syt_Ym9i_ccc_333", "", 8110), ("", "", 8112),
    ],
)
def test_three_sync_workers_route_as_apache_routed_them(
        authorization: str, query: str, port: int) -> None:
    # Seen from Debian 13's Apache 2.4 with this site (its worker ports moved) in front of
    # stand-in backends that echo their port.
    text = site("sync=3,client=1")

    assert route(text, SYNC, authorization, query) == f"http://127.0.0.1:{port}{SYNC}"
