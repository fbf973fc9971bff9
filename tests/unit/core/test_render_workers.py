"""render with matrix-stack/workers: every file compared with golden files in tests/data/workers
(UPDATE_GOLDEN=1 rewrites them, as for test_render.py), and what the worker layout implies."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from matrix_stack.base.files import FileSpec
from matrix_stack.base.paths import APACHE_SITE_PATH, SYNAPSE_CONF_PATH
from matrix_stack.base.secrets import Secrets
from matrix_stack.core.host import Facts
from matrix_stack.core.render import render_all
from matrix_stack.core.settings import from_mapping

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "workers"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SECRETS = Secrets(turn_shared_secret="test-turn-secret", redis_password="test-redis-password")
FACTS = Facts(listening_ip="203.0.113.10", external_ip="203.0.113.10", cpu_count=2)
LAYOUT = "sync=2,client=1,federation-reader=1,federation-sender=1,media=1,background=1"
VALKEY_CONF = Path("/etc/valkey/valkey-matrix-stack.conf")


def render(workers: str = LAYOUT, facts: Facts = FACTS) -> dict[Path, FileSpec]:
    settings = from_mapping({"server_name": "matrix.example.org", "database": "postgresql",
                             "workers": workers})
    return {spec.path: spec for spec in render_all(settings, SECRETS, facts)}


def golden_path(target: Path) -> Path:
    return DATA_DIR / str(target).lstrip("/").replace("/", "__")


RENDERED = render()


@pytest.mark.parametrize("target", list(RENDERED), ids=lambda path: path.name)
def test_render_with_workers_matches_golden_file(target: Path) -> None:
    golden = golden_path(target)
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(RENDERED[target].text, encoding="utf-8")

    assert RENDERED[target].text == golden.read_text(encoding="utf-8")


def test_golden_directory_holds_exactly_the_files_rendered_with_workers() -> None:
    assert sorted(path.name for path in DATA_DIR.iterdir()) == sorted(
        golden_path(target).name for target in RENDERED)


def test_render_with_workers_writes_one_config_per_worker_and_the_valkey_instance() -> None:
    extra = {str(path): (oct(spec.mode), spec.owner, spec.group)
             for path, spec in RENDERED.items() if path not in render("off")}

    assert extra == {
        **{f"/etc/matrix-synapse/workers/{name}.yaml": ("0o644", "root", "root")
           for name in ("sync1", "sync2", "client1", "federation_reader1",
                        "federation_sender1", "media1", "background1")},
        str(VALKEY_CONF): ("0o640", "root", "valkey"),
    }


def test_render_with_workers_gives_main_replication_redis_and_the_duties() -> None:
    config = yaml.safe_load(RENDERED[SYNAPSE_CONF_PATH].text)

    assert config["listeners"][1] == {
        "port": 9093, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
        "resources": [{"names": ["replication"]}]}
    assert config["instance_map"] == {"main": {"host": "127.0.0.1", "port": 9093}}
    assert config["redis"] == {"enabled": True, "host": "127.0.0.1", "port": 6380,
                               "password_path": "/etc/matrix-stack/secrets/redis_password"}
    assert config["worker_replication_secret_path"] == (
        "/etc/matrix-stack/secrets/worker_replication_secret")
    assert (config["send_federation"], config["federation_sender_instances"]) == (
        False, ["federation_sender1"])
    assert (config["enable_media_repo"], config["media_instance_running_background_jobs"]) == (
        False, "media1")
    assert config["run_background_tasks_on"] == "background1"


def test_render_with_workers_keeps_secrets_out_of_synapse_and_worker_files() -> None:
    holding = [str(path) for path, spec in RENDERED.items()
               if "test-redis-password" in spec.text]

    assert holding == [str(VALKEY_CONF)]


def test_render_without_workers_has_none_of_their_settings() -> None:
    plain = render("off")
    config = yaml.safe_load(plain[SYNAPSE_CONF_PATH].text)

    assert not {"instance_map", "redis", "send_federation", "enable_media_repo"} & set(config)
    assert len(config["listeners"]) == 1
    assert "balancer://" not in plain[APACHE_SITE_PATH].text


def test_render_apache_routes_workers_before_the_main_process_in_every_vhost() -> None:
    site = RENDERED[APACHE_SITE_PATH].text
    vhosts = re.findall(r"<VirtualHost \*:(\d+)>(.*?)</VirtualHost>", site, re.S)
    proxied = [(port, body) for port, body in vhosts if "ProxyPass /_matrix" in body]

    assert [port for port, _ in proxied] == ["443", "8448"]
    for _port, body in proxied:
        assert body.index("ProxyPassMatch") < body.index("ProxyPass /_matrix")
        assert 'BalancerMember "http://127.0.0.1:8130"' in body
        # Two sync workers: sticky by user through mod_rewrite (test_sync_sticky.py).
        assert "RewriteRule ^/_matrix/.* http://127.0.0.1:8111$0 [P]" in body
        assert 'ProxyPassMatch "^/_matrix/media/" "balancer://synapse-media" nocanon' in body
        assert ('ProxyPassMatch "^/_matrix/federation/v1/send/" '
                '"balancer://synapse-federation-reader" nocanon') in body


def test_render_auto_follows_the_cores_and_redis_when_valkey_is_missing() -> None:
    rendered = render("auto", Facts(cpu_count=8, key_value_server="redis"))
    workers = sorted(path.stem for path in rendered
                     if str(path).startswith("/etc/matrix-synapse/workers/"))

    assert workers == ["background1", "client1", "client2", "federation_reader1",
                       "federation_sender1", "media1", "sync1", "sync2"]
    redis = rendered[Path("/etc/redis/redis-matrix-stack.conf")]
    assert (redis.owner, redis.group) == ("root", "redis")
    assert "pidfile /run/redis-matrix-stack/redis-server.pid" in redis.text
