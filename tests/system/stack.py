"""Helpers for the booted-system tests: install the .deb, preseed, talk to the stack."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.system.testbed import Container, Response, Target, https_request, wait_for

SERVER = "matrix.example.test"
APT = ["apt-get", "-y", "-o", "Acquire::Check-Valid-Until=false"]
SELF_SIGNED_CERT = "/etc/matrix-stack/tls/self-signed.crt"
TEMPLATES = Path(__file__).resolve().parents[2] / "debian" / "matrix-stack.templates"
HOSTS_MARK = "# matrix-stack system test"
SYNAPSE_URL = "http://127.0.0.1:8008"
# What matrix-stack/workers needs installed first (the package installs none of them), and
# the answers that turn workers on.
WORKER_PACKAGES = ("postgresql", "python3-psycopg2", "valkey-server")
WORKER_ANSWERS = {"database": "postgresql", "workers": "auto"}
WORKERS_SKIP_REASON = (
    "workers need Synapse's Redis client (txredisapi): matrix-synapse-py3 only")


def question_types() -> dict[str, str]:
    """Return each matrix-stack question's debconf type, read from debian/*.templates."""
    types = {}
    for block in TEMPLATES.read_text().split("\n\n"):
        name = re.search(r"^Template: (\S+)", block, re.M)
        kind = re.search(r"^Type: (\S+)", block, re.M)
        if name and kind:
            types[name.group(1)] = kind.group(1)
    return types


def preseed(container: Container, answers: Mapping[str, str]) -> None:
    """Set debconf answers (question names without the matrix-stack/ prefix)."""
    types = question_types()
    lines = []
    for name, value in answers.items():
        question = name if "/" in name else f"matrix-stack/{name}"
        owner = question.split("/")[0]
        kind = types.get(question, "string")
        lines.append(f"{owner} {question} {kind} {value}\n")
    container.run(["debconf-set-selections"], input="".join(lines))


def apt_install(container: Container, *packages: str, check: bool = True) -> Any:
    """apt-get install packages (or .deb paths) inside the container, fetching lists if needed."""
    if not list(container.path("/var/lib/apt/lists").glob("*_Packages")):
        # mmdebstrap leaves no package lists: fetch them so apt can resolve dependencies.
        container.run([*APT, "update"], timeout=600)
    return container.run([*APT, "install", *packages], check=check, timeout=900)


def skip_unless_workers_run(target: Target) -> None:
    """Skip the test on a target whose Synapse cannot run workers (Debian's matrix-synapse)."""
    if target.synapse_package != "matrix-synapse-py3":
        pytest.skip(WORKERS_SKIP_REASON)


def install(container: Container, deb: Path, *, check: bool = True) -> Any:
    """apt-get install the .deb inside the container (apt resolves the real dependencies)."""
    target = f"/srv/{deb.name}"
    container.copy_in(deb, target)
    return apt_install(container, target, check=check)


@contextmanager
def installed_stack(base_tarball: Path, deb: Path, name: str) -> Iterator[Container]:
    """Boot a container, install the .deb, wait for the client API; close it at the end."""
    with Container(base_tarball, name=name, hostname=SERVER) as container:
        container.boot()
        install(container, deb)
        wait_for_client_api(container)
        yield container


def synapse_request(
    method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One client/admin API request to Synapse on 127.0.0.1:8008 (the container shares the
    host's network); return the status and the JSON body, errors included."""
    request = urllib.request.Request(
        SYNAPSE_URL + path, data=json.dumps(body).encode() if body is not None else None,
        method=method, headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def login(user: str, password: str) -> str:
    status, body = synapse_request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    })
    assert status == 200, body
    return str(body["access_token"])


def add_user(ct: Container, name: str, password: str) -> None:
    ct.run(["matrix-stack-admin", "user", "add", name, "--password-file", "-"], input=password)


def https(
    container: Container,
    path: str,
    *,
    port: int = 443,
    server_name: str = SERVER,
    method: str = "GET",
    cafile: str | None = SELF_SIGNED_CERT,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> Response:
    """One HTTPS request from the host to the stack, verified against the container's CA file."""
    return https_request(
        method,
        "127.0.0.1",
        port,
        path,
        server_name=server_name,
        cafile=str(container.path(cafile)) if cafile else None,
        headers=headers,
        body=body,
    )


def wait_for_client_api(container: Container, server_name: str = SERVER, **kwargs: Any) -> None:
    wait_for(
        lambda: (
            https(container, "/_matrix/client/versions", server_name=server_name, **kwargs).status
            == 200
        ),
        timeout=120,
        what=f"https://{server_name}/_matrix/client/versions to answer 200",
    )


def wait_for_workers(container: Container) -> None:
    """Wait until every worker is active, answering and connected to replication."""
    wait_for(
        lambda: container.run(["matrix-stack-admin", "workers", "status"],
                              check=False).returncode == 0,
        timeout=120, interval=2, what="every Synapse worker to be ready",
    )


def unit_start(container: Container, unit: str) -> str:
    """Return what identifies the current run of a unit: main PID and start time."""
    result = container.run(
        ["systemctl", "show", "-p", "MainPID", "-p", "ExecMainStartTimestampMonotonic", unit]
    )
    return result.stdout.strip().replace("\n", " ")


def journal(container: Container, unit: str) -> str:
    """Return every line a unit (or a pattern of units) logged in the journal, message only."""
    return container.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager"],
                         check=False).stdout


def reload_count(container: Container, unit: str) -> int:
    """Return how many times systemd reloaded a unit (Apache reloads keep their main PID)."""
    return len(re.findall(r"^Reloaded ", journal(container, unit), re.M))


@contextmanager
def unit_runs(container: Container, units: tuple[str, ...]) -> Iterator[dict[str, bool]]:
    """Yield a dict filled on exit with whether each unit was restarted or reloaded meanwhile."""
    before = {unit: (unit_start(container, unit), reload_count(container, unit)) for unit in units}
    changed: dict[str, bool] = {}
    yield changed
    time.sleep(0.5)
    for unit in units:
        now = (unit_start(container, unit), reload_count(container, unit))
        changed[unit] = now != before[unit]


def doctor(ct: Container) -> tuple[int, dict[str, dict[str, object]]]:
    """Run doctor --json; return its exit status and its checks by name."""
    result = ct.run(["matrix-stack-admin", "doctor", "--json"], check=False, timeout=300)
    return result.returncode, {check["name"]: check for check in json.loads(result.stdout)}


def stat(container: Container, path: str) -> str:
    """Return 'owner:group mode' of a path inside the container."""
    return container.run(["stat", "-c", "%U:%G %a", path]).stdout.strip()


def read_stack(container: Container) -> str:
    return container.read_file("/etc/matrix-stack/stack.yaml")


def set_stack_value(container: Container, key: str, value: str) -> None:
    """Edit one line of stack.yaml as an administrator would with an editor."""
    text = read_stack(container)
    pattern = re.compile(rf"^{key}:.*$", re.M)
    line = f"{key}: {value}"
    text = pattern.sub(line, text) if pattern.search(text) else text + line + "\n"
    container.write_file("/etc/matrix-stack/stack.yaml", text)


@contextmanager
def host_resolves(*names: str) -> Iterator[None]:
    """Let the host's resolver find names on loopback while a client runs (TESTBED.md)."""
    hosts = Path("/etc/hosts")
    hosts.write_text(hosts.read_text() + f"127.0.0.1 {' '.join(names)} {HOSTS_MARK}\n")
    try:
        yield
    finally:
        hosts.write_text(
            "".join(line for line in hosts.read_text().splitlines(True) if HOSTS_MARK not in line)
        )
