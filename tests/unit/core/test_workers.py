"""workers: the answer to matrix-stack/workers, the layout it means, and the config script's
own check of it (POSIX sh)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base.errors import SettingsError
from matrix_stack.core.settings import from_mapping
from matrix_stack.core.worker_routes import ROUTES_OF_KIND, apache_pattern
from matrix_stack.core.workers import auto_counts, check_workers, plan_workers

CONFIG = Path(__file__).resolve().parents[3] / "debian" / "matrix-stack.config"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (None, "off"), ("", "off"), (False, "off"), ("off", "off"), (" Auto ", "auto"),
        ("media=1, sync=2", "sync=2,media=1"),
        ("sync=1 client=0 federation-sender=2", "sync=1,federation-sender=2"),
        ("background=1", "background=1"),
    ],
)
def test_check_workers_keeps_off_auto_or_a_canonical_layout(given: Any, kept: str) -> None:
    assert check_workers("workers", given) == kept


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("sync", "must be off, auto, or counts per kind"),
        ("sync=two", "must be off, auto, or counts per kind"),
        ("event-persister=1", "names an unknown kind event-persister"),
        ("sync=1,sync=2", "gives sync twice"),
        ("sync=17", "asks for 17 sync workers; at most 16"),
        ("background=2", "asks for 2 background workers; at most 1"),
        ("sync=0,media=0", "has no worker: answer off instead"),
    ],
)
def test_check_workers_refuses_a_wrong_layout_with_the_reason(given: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=reason):
        check_workers("workers", given)


def test_workers_without_postgresql_are_refused_with_the_migrate_command() -> None:
    with pytest.raises(SettingsError) as raised:
        from_mapping({"server_name": "example.org", "workers": "auto"})

    assert raised.value.question == "workers"
    assert "needs database: postgresql" in raised.value.reason
    assert raised.value.reason.endswith("matrix-stack-admin db migrate-to-postgresql")


def test_workers_with_postgresql_are_kept_in_settings() -> None:
    settings = from_mapping({"server_name": "example.org", "database": "postgresql",
                             "workers": "media=1,sync=1"})

    assert settings.workers == "sync=1,media=1"


def test_workers_off_is_the_default_and_needs_no_postgresql() -> None:
    assert from_mapping({"server_name": "example.org"}).workers == "off"


@pytest.mark.parametrize(
    ("cores", "counts"),
    [
        (1, {"sync": 1, "client": 1, "federation-reader": 1, "federation-sender": 1,
             "media": 1, "background": 0}),
        (2, {"sync": 1, "client": 1, "federation-reader": 1, "federation-sender": 1,
             "media": 1, "background": 0}),
        (8, {"sync": 2, "client": 2, "federation-reader": 1, "federation-sender": 1,
             "media": 1, "background": 1}),
        (32, {"sync": 8, "client": 8, "federation-reader": 4, "federation-sender": 2,
              "media": 1, "background": 1}),
        (512, {"sync": 16, "client": 16, "federation-reader": 16, "federation-sender": 16,
               "media": 1, "background": 1}),
    ],
)
def test_auto_layout_grows_with_the_cores(cores: int, counts: dict[str, int]) -> None:
    assert auto_counts(cores) == counts


def test_plan_workers_names_and_ports_each_kind_apart() -> None:
    workers = plan_workers("sync=2,federation-sender=1,media=1", cores=2)

    assert [(worker.name, worker.port, worker.kind.app, worker.unit) for worker in workers] == [
        ("sync1", 8110, "synapse.app.generic_worker", "matrix-synapse-worker@sync1"),
        ("sync2", 8111, "synapse.app.generic_worker", "matrix-synapse-worker@sync2"),
        ("federation_sender1", 8170, "synapse.app.generic_worker",
         "matrix-synapse-worker@federation_sender1"),
        ("media1", 8190, "synapse.app.media_repository", "matrix-synapse-worker@media1"),
    ]
    assert workers[0].config_path == "/etc/matrix-synapse/workers/sync1.yaml"


def test_plan_workers_off_gives_none() -> None:
    assert plan_workers("off", cores=64) == ()


def test_apache_pattern_lets_a_query_string_follow_an_anchored_path() -> None:
    pattern = apache_pattern(r"^/_matrix/client/(r0|v3)/sync$")

    assert pattern == r"^/_matrix/client/(r0|v3)/sync(\?|$)"
    assert re.match(pattern, "/_matrix/client/v3/sync?since=s1_2&timeout=30000")
    assert re.match(pattern, "/_matrix/client/v3/sync")
    assert not re.match(pattern, "/_matrix/client/v3/syncx")
    assert apache_pattern(r"^/_matrix/media/") == r"^/_matrix/media/"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/_matrix/client/v3/sync", "sync"),
        ("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", "sync"),
        ("/_matrix/client/v3/rooms/!a:example.org/send/m.room.message/t1", "client"),
        ("/_matrix/client/v3/login", "client"),
        ("/_matrix/client/unstable/org.matrix.msc4140/delayed_events", "client"),
        ("/_matrix/federation/v1/send/1234", "federation-reader"),
        ("/_matrix/key/v2/query", "federation-reader"),
        ("/_matrix/media/v3/upload", "media"),
        ("/_matrix/client/v1/media/download/example.org/abc", "media"),
        ("/_matrix/client/v3/rooms/!a:example.org/messages", None),
        ("/_matrix/key/v2/server", None),
    ],
)
def test_routes_send_each_documented_path_to_its_kind(path: str, kind: str | None) -> None:
    matched = [name for name, patterns in ROUTES_OF_KIND.items()
               if any(re.match(pattern, path) for pattern in patterns)]

    assert matched == ([kind] if kind else [])


def config_reason(value: str, database: str, bin_dir: Path) -> str:
    """Run the config script's workers_reason with $DATABASE set, binaries looked up under
    bin_dir instead of /usr/bin and /opt (a fake host)."""
    text = CONFIG.read_text(encoding="utf-8")
    match = re.search(r"^workers_reason\(\) {\n.*?^}\n", text, re.M | re.S)
    assert match
    function = match.group(0).replace("/usr/bin/", f"{bin_dir}/usr/bin/").replace(
        "/opt/venvs/", f"{bin_dir}/opt/venvs/")
    result = subprocess.run(
        ["sh", "-c", function + 'workers_reason "$1"', "sh", value],
        capture_output=True, text=True, check=True,
        env={"DATABASE": database, "PATH": f"{bin_dir}/usr/bin:/bin"},
    )
    return result.stdout.strip()


def fake_host(root: Path, *, valkey: bool, txredisapi: bool) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    if valkey:
        (root / "usr/bin/valkey-server").write_text("")
        (root / "usr/bin/valkey-server").chmod(0o755)
    python = root / "opt/venvs/matrix-synapse/bin/python"
    python.parent.mkdir(parents=True)
    # A stand-in Synapse Python: 'import synapse' works, 'import txredisapi' as told.
    python.write_text("#!/bin/sh\n"
                      f'case "$2" in *txredisapi*) exit {0 if txredisapi else 1} ;; esac\n')
    python.chmod(0o755)
    return root


def test_config_script_accepts_a_layout_on_a_host_that_can_run_it(tmp_path: Path) -> None:
    host = fake_host(tmp_path, valkey=True, txredisapi=True)

    assert config_reason("sync=2,media=1", "postgresql", host) == ""
    assert config_reason("auto", "postgresql", host) == ""
    assert config_reason("off", "sqlite", host) == ""


@pytest.mark.parametrize(
    ("value", "database", "valkey", "txredisapi", "reason"),
    [
        ("sync=x", "postgresql", True, True, "counts per kind are needed"),
        ("auto", "sqlite", True, True, "matrix-stack-admin db migrate-to-postgresql"),
        ("auto", "postgresql", False, True, "apt install valkey-server"),
        ("auto", "postgresql", True, False, "lacks txredisapi"),
    ],
)
def test_config_script_refuses_workers_the_host_cannot_run(
    tmp_path: Path, value: str, database: str, valkey: bool, txredisapi: bool, reason: str
) -> None:
    host = fake_host(tmp_path, valkey=valkey, txredisapi=txredisapi)

    assert reason in config_reason(value, database, host)
