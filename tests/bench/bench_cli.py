"""make bench's CLI table: matrix-stack-admin beside synadm and one raw admin-API page.

Printed, never asserted. Rounds are interleaved (one run of each command a round) and medians
reported, since the machine drifts. matrix-stack-admin and bare Python are timed inside the
container, as an admin runs them. synadm runs on the host, from the test venv (it is never
installed on the target), against the booted Synapse on the shared loopback, as does the raw
page: one GET /_synapse/admin/v2/users?limit=1000, timed in-process (no Python start-up).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.system import stack
from tests.system.testbed import Container

SYNAPSE = "http://127.0.0.1:8008"
# One command's wall time inside the container, in seconds (printed as JSON).
TIMER = """
import subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(time.perf_counter() - start)
"""
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "ALL_PROXY")


def inside(container: Container, *argv: str) -> Callable[[], float]:
    return lambda: float(container.run(["python3", "-c", TIMER, *argv]).stdout)


def on_host(argv: list[str], env: dict[str, str]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, timeout=120)
        return time.perf_counter() - start
    return run


def raw_page(token: str, limit: int) -> Callable[[], float]:
    """Time one admin-API page of limit users, never through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"{SYNAPSE}/_synapse/admin/v2/users?from=0&limit={limit}",
        headers={"Authorization": f"Bearer {token}"},
    )

    def run() -> float:
        start = time.perf_counter()
        with opener.open(request, timeout=60) as response:
            response.read()
        return time.perf_counter() - start
    return run


def synadm_program() -> tuple[Path | None, str]:
    """Return synadm from the test venv, installed there first if need be; or None and why."""
    if sys.prefix == sys.base_prefix:
        return None, (f"not measured: {sys.executable} is no virtual environment, and synadm is "
                      "installed only into the test venv")
    program = Path(sys.executable).parent / "synadm"
    if not program.exists():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "synadm"], capture_output=True, text=True, timeout=900, check=False,
        )
        if result.returncode != 0 or not program.exists():
            why = (result.stderr.strip().splitlines() or ["no synadm after pip install"])[-1]
            return None, f"not measured: synadm cannot be installed into the test venv ({why})"
    return program, ""


def synadm_command(program: Path, home: Path, token: str) -> tuple[list[str], dict[str, str]]:
    """Return synadm's `user list` of every account as JSON, configured for the booted stack."""
    config = home / "synadm.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "user": f"@matrix-stack:{stack.SERVER}", "token": token, "base_url": SYNAPSE,
        "admin_path": "/_synapse/admin", "matrix_path": "/_matrix", "timeout": 30,
        "server_discovery": "well-known", "homeserver": stack.SERVER, "ssl_verify": False,
        "format": "json",
    }))
    config.chmod(0o600)
    env = {name: value for name, value in os.environ.items() if name not in PROXY_VARIABLES}
    env["HOME"] = str(home)  # its debug log goes to ~/.local/share/synadm
    return [str(program), "-c", str(config), "--batch", "-o", "json", "user", "list",
            "-l", "5000"], env


def milliseconds(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1000:.1f} ms (min {min(times) * 1000:.1f})"


def print_cli_table(container: Container, accounts: int, rounds: int = 15) -> None:
    """Print the CLI table: start-up, user list --json over the accounts, synadm, raw page."""
    token = container.read_file("/var/lib/matrix-stack/admin-token").strip()
    container.run(["sh", "-c", "rm -f /var/lib/matrix-stack/help-*"])
    first_help = inside(container, "matrix-stack-admin", "--help")()
    commands: dict[str, Callable[[], float]] = {
        "python3 -c pass (floor)": inside(container, "python3", "-c", "pass"),
        "matrix-stack-admin --help": inside(container, "matrix-stack-admin", "--help"),
        "matrix-stack-admin user list --help": inside(
            container, "matrix-stack-admin", "user", "list", "--help"),
        f"matrix-stack-admin user list --json ({accounts} accounts)": inside(
            container, "matrix-stack-admin", "user", "list", "--json"),
        "raw admin-API page, limit=1000 (in-process)": raw_page(token, 1000),
    }
    program, why_not = synadm_program()
    with tempfile.TemporaryDirectory(prefix="bench-synadm-") as home:
        synadm = f"synadm user list -o json -l 5000 ({accounts} accounts, host venv)"
        if program is not None:
            argv, env = synadm_command(program, Path(home), token)
            check = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if check.returncode == 0 and '"users"' in check.stdout:
                commands[synadm] = on_host(argv, env)
            else:
                why_not = (f"not measured: synadm exits {check.returncode}: "
                           f"{(check.stderr or check.stdout).strip()[-300:]}")
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, run in commands.items():
                times[name].append(run())
    print(f"CLI ({rounds} interleaved rounds; ours and the floor timed in the container):")
    print(f"  first --help after install (argparse; keeps the help): {first_help * 1000:.1f} ms")
    for name, values in times.items():
        print(f"  {name}: {milliseconds(values)}")
    if synadm not in times:
        print(f"  synadm: {why_not}")
    median = {name: statistics.median(values) for name, values in times.items()}
    floor = median["python3 -c pass (floor)"]
    print(f"  --help / bare Python: {median['matrix-stack-admin --help'] / floor:.2f}; "
          f"user list --help / bare Python: "
          f"{median['matrix-stack-admin user list --help'] / floor:.2f}")
    listing = median[f"matrix-stack-admin user list --json ({accounts} accounts)"]
    if synadm in median:
        print(f"  user list --json / synadm: {listing / median[synadm]:.2f}")
