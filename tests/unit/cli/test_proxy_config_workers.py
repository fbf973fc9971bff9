"""proxy-config with matrix-stack/workers: a proxy on this host sends the workers' endpoints to
them (sync sticky by user in HAProxy; through Apache in Traefik, which cannot hash on a header),
a proxy elsewhere leaves them to Apache. Compared with golden files in tests/data/proxy-config
(UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from matrix_stack.cli.proxy_config import on_this_host, render_proxy_config
from matrix_stack.core.workers import plan_workers
from tests.unit.helpers import make_settings

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "proxy-config"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
LAYOUT = "sync=2,client=1,federation-reader=1,federation-sender=1,media=1"
LOCAL = "127.0.0.1:80"
REMOTE = "10.0.0.5:80"


def render(proxy: str, backend: str = LOCAL, workers: str = LAYOUT) -> str:
    settings = make_settings(behind_proxy=True, proxy_addresses=["127.0.0.1"],
                             database="postgresql", workers=workers)
    return render_proxy_config(settings, proxy, backend, plan_workers(settings.workers, 2))


CASES = {
    "haproxy-workers.cfg": ("haproxy", LOCAL, LAYOUT),
    "haproxy-one-sync-worker.cfg": ("haproxy", LOCAL, "sync=1,media=1"),
    "haproxy-workers-elsewhere.cfg": ("haproxy", REMOTE, LAYOUT),
    "traefik-workers.yaml": ("traefik", LOCAL, LAYOUT),
    "traefik-one-sync-worker.yaml": ("traefik", LOCAL, "sync=1,media=1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_proxy_config_with_workers_matches_golden_file(name: str) -> None:
    text = render(*CASES[name])
    golden = DATA_DIR / name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")

    assert text == golden.read_text(encoding="utf-8")


def test_golden_directory_holds_exactly_the_cases() -> None:
    assert sorted(path.name for path in DATA_DIR.iterdir()) == sorted(CASES)


@pytest.mark.parametrize(
    ("backend", "local"),
    [("127.0.0.1:80", True), ("127.0.1.1:8080", True), ("[::1]:80", True),
     ("localhost:80", True), ("10.0.0.5:80", False), ("[2001:db8::5]:80", False),
     ("proxy.example.org:80", False)],
)
def test_on_this_host_only_for_a_loopback_backend(backend: str, local: bool) -> None:
    assert on_this_host(backend) is local


def sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            current = found.setdefault(line, [])
        elif line.strip() and not line.lstrip().startswith("#"):
            current.append(line.strip())
    return found


def test_haproxy_sends_each_kind_to_its_workers_before_apache() -> None:
    config = sections(render("haproxy"))
    frontend = config["frontend matrix-stack"]
    uses = [line for line in frontend if line.startswith("use_backend")]

    assert uses == [
        "use_backend synapse-sync if matrix_server synapse-sync",
        "use_backend synapse-client if matrix_server synapse-client",
        "use_backend synapse-federation-reader if matrix_server synapse-federation-reader",
        "use_backend synapse-media if matrix_server synapse-media",
        "use_backend matrix-stack if matrix_stack_host",
    ]
    assert "acl synapse-federation-reader path_reg '^/_matrix/federation/v1/send/'" in frontend
    assert "acl synapse-media path_reg '^/_matrix/media/'" in frontend
    assert config["backend synapse-media"][-1] == "server media1 127.0.0.1:8190 check"
    assert "balance source" in config["backend synapse-federation-reader"]
    # The federation sender serves no request: no backend of its own.
    assert "backend synapse-federation-sender" not in config


def test_haproxy_hashes_sync_on_the_user_across_two_sync_workers() -> None:
    sync = sections(render("haproxy"))["backend synapse-sync"]

    assert "balance hash var(txn.sync_key)" in sync
    assert "hash-type consistent" in sync
    assert sync[-2:] == ["server sync1 127.0.0.1:8110 check", "server sync2 127.0.0.1:8111 check"]


def test_haproxy_with_one_sync_worker_does_not_hash() -> None:
    sync = sections(render("haproxy", workers="sync=1,media=1"))["backend synapse-sync"]

    assert not [line for line in sync if line.startswith(("balance", "http-request"))]


def test_a_proxy_elsewhere_leaves_the_workers_to_apache() -> None:
    for proxy in ("haproxy", "traefik"):
        text = render(proxy, REMOTE)

        assert "synapse-" not in text
        assert "reach: Apache sends their endpoints to them (sync sticky by user)" in text


def test_without_workers_nothing_is_said_of_them() -> None:
    for proxy in ("haproxy", "traefik"):
        assert "worker" not in render(proxy, workers="off")


def test_traefik_routes_the_workers_and_leaves_shared_sync_to_apache() -> None:
    text = render("traefik")
    config = yaml.safe_load(text)
    routers, services = config["http"]["routers"], config["http"]["services"]

    assert list(routers) == ["matrix-stack", "matrix-stack-federation", "synapse-client",
                             "synapse-federation-reader", "synapse-media"]
    assert routers["synapse-media"]["entryPoints"] == ["websecure", "matrix-federation"]
    assert routers["synapse-media"]["rule"] == (
        "Host(`matrix.example.org`) && PathRegexp(`^/_matrix/media/|^/_matrix/client/v1/media/"
        "|^/_matrix/federation/v1/media/`)")
    assert services["synapse-media"]["loadBalancer"]["servers"] == [
        {"url": "http://127.0.0.1:8190"}]
    assert "it cannot hash on the access\n# token, so sync goes on through Apache" in text


def test_traefik_with_one_sync_worker_routes_sync_to_it() -> None:
    config = yaml.safe_load(render("traefik", workers="sync=1,media=1"))

    assert config["http"]["services"]["synapse-sync"]["loadBalancer"]["servers"] == [
        {"url": "http://127.0.0.1:8110"}]
    rule = config["http"]["routers"]["synapse-sync"]["rule"]
    pattern = re.search(r"PathRegexp\(`(.*)`\)", rule)
    assert pattern is not None
    assert re.match(pattern.group(1), "/_matrix/client/v3/sync")
    assert not re.match(pattern.group(1), "/_matrix/client/v3/rooms/!a:b/messages")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_config_with_workers(tmp_path: Path) -> None:
    text = render("haproxy").replace("ssl crt /etc/haproxy/certs/ alpn h2,http/1.1", "")
    config = tmp_path / "haproxy.cfg"
    config.write_text("defaults\n    timeout connect 5s\n" + text)

    result = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr
