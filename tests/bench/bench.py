"""make bench: numbers from a booted target running the stack; printed, never asserted.

Runs on $MATRIX_STACK_TARGET (make bench: Debian 13 + matrix-synapse-py3, then sid).
- install: apt-get install of the .deb, Synapse already installed (on Debian 13 it is
  installed from its repository first, and timed apart), until /_matrix/client/versions
  answers through Apache;
- apply: a no-change `matrix-stack-admin apply` (goal < 1 s, restarting nothing);
- the CLI table (bench_cli): `--help` against bare Python (goal: at most twice), and
  `user list --json` over 1,000 accounts beside synadm (goal: at most half) and one raw
  admin-API page of 1,000.
Times of commands are taken inside the container, so nsenter's own cost is not counted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.bench.bench_cli import print_cli_table
from tests.system import stack
from tests.system.testbed import Container, cleanup_stale, current_target, ensure_base_tarball

# Runs a command N times inside the container and prints the wall times as JSON.
TIMER = """
import json, subprocess, sys, time
runs, argv = int(sys.argv[1]), sys.argv[2:]
times = []
for _ in range(runs):
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""

# Runs a command, printing each line of its output after the seconds since it started.
STAMPED = """
import subprocess, sys, time
start = time.monotonic()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for line in child.stdout:
    print(f"{time.monotonic() - start:.3f} {line.rstrip()}", flush=True)
print(f"{time.monotonic() - start:.3f} exit {child.wait()}")
sys.exit(child.returncode)
"""
# apt-get's stages, each starting at the first line of output that begins with its mark.
APT_STAGES = (
    ("resolve dependencies, preconfigure (matrix-stack's config script)", ""),
    ("unpack", "Preparing to unpack"),
    ("set up the dependencies", "Setting up"),
    ("matrix-stack's postinst", "Setting up matrix-stack "),
    ("triggers", "Processing triggers"),
)


def apt_stages(stamped: str) -> list[str]:
    """Return one line per stage of a stamped apt-get install: its seconds, and how many
    packages it unpacked or set up."""
    lines = [(float(seconds), text) for seconds, _, text in
             (line.partition(" ") for line in stamped.splitlines())]
    found: list[float | None] = [0.0]
    after = 0.0
    for _name, mark in APT_STAGES[1:]:
        found.append(next((seconds for seconds, text in lines
                           if text.startswith(mark) and seconds >= after), None))
        after = found[-1] if found[-1] is not None else after
    # A stage that did not happen (no trigger to run) lasts nothing: it starts where the next
    # one does.
    starts = [lines[-1][0]]
    for start in reversed(found):
        starts.insert(0, starts[0] if start is None else start)
    unpacked = sum(text.startswith("Preparing to unpack") for _seconds, text in lines)
    counts = {1: unpacked, 2: unpacked - 1}
    return [f"{name}{f' ({counts[index]} packages)' if index in counts else ''}: "
            f"{starts[index + 1] - starts[index]:.1f} s"
            for index, (name, _mark) in enumerate(APT_STAGES)]


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown CPU",
    )
    python = platform.python_version()
    return f"{os.cpu_count()} x {cpu}, kernel {platform.release()}, host Python {python}"


def timed(container: Container, runs: int, *argv: str) -> str:
    times = json.loads(container.run(["python3", "-c", TIMER, str(runs), *argv]).stdout)
    return (f"median {statistics.median(times) * 1000:.0f} ms, "
            f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms ({runs} runs)")


def add_users(container: Container, count: int) -> None:
    """Create accounts through the admin API with the CLI's own cached token."""
    container.run(["matrix-stack-admin", "user", "list", "--json"])  # makes the token
    token = container.read_file("/var/lib/matrix-stack/admin-token").strip()
    for index in range(count):
        user = urllib.parse.quote(f"@bench{index:04d}:{stack.SERVER}", safe="")
        request = urllib.request.Request(
            f"http://127.0.0.1:8008/_synapse/admin/v2/users/{user}",
            data=json.dumps({"password": f"bench-{index}"}).encode(), method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).close()


def main() -> int:
    cleanup_stale()
    deb = Path(os.environ["MATRIX_STACK_DEB"])
    target = current_target()
    print(f"machine: {machine()}")
    with Container(ensure_base_tarball(target=target), name="bench",
                   hostname=stack.SERVER) as container:
        container.boot()
        container.copy_in(deb, f"/srv/{deb.name}")
        container.run([*stack.APT, "update"], timeout=600)
        if target.synapse_package == "matrix-synapse-py3":
            stack.preseed(container, {"matrix-synapse/server-name": stack.SERVER})
            started = time.monotonic()
            container.run([*stack.APT, "install", target.synapse_package], timeout=900)
            print(f"{target.synapse_package} from its repository (apt-get install, started by "
                  f"its postinst): {time.monotonic() - started:.1f} s")
        container.run([*stack.APT, "install", "--download-only", f"/srv/{deb.name}"])
        container.write_file("/srv/stamped.py", STAMPED)
        started = time.monotonic()
        # The postinst says how long each of its phases took (matrix_stack/base/phases.py).
        result = container.run(["python3", "/srv/stamped.py", *stack.APT, "-o", "Dpkg::Use-Pty=0",
                                "install", f"/srv/{deb.name}"], timeout=900,
                               env={"MATRIX_STACK_PHASES": "1"})
        installed = time.monotonic()
        stack.wait_for_client_api(container)
        answered = time.monotonic()
        print(f"container: {target.description}, "
              f"{container.run(['python3', '--version']).stdout.strip()}")
        print(f"install: apt-get install {installed - started:.1f} s (dependencies downloaded "
              f"beforehand); until /_matrix/client/versions answers 200 through Apache: "
              f"{answered - started:.1f} s")
        for line in apt_stages(result.stdout):
            print(f"  {line}")
        phases = [line.split(" ", 1)[1].removeprefix("matrix-stack: phase ")
                  for line in result.stdout.splitlines()
                  if line.split(" ", 1)[-1].startswith("matrix-stack: phase ")]
        for line in phases:
            if " > run " not in line or float(line.rsplit(": ", 1)[1].split()[0]) >= 0.2:
                print(f"    postinst phase {line}")
        units = ("matrix-synapse", "coturn", "apache2")
        with stack.unit_runs(container, units) as changed:
            print(f"no-change apply: {timed(container, 10, 'matrix-stack-admin', 'apply')}; "
                  f"restarted: {[u for u, c in changed.items() if c] or 'nothing'}")
        container.write_file("/etc/matrix-synapse/conf.d/90-bench-only.yaml", "bcrypt_rounds: 4\n")
        container.run(["systemctl", "restart", "matrix-synapse"])
        stack.wait_for_client_api(container)
        add_users(container, 1000)
        listed = json.loads(container.run(["matrix-stack-admin", "user", "list", "--json"]).stdout)
        print_cli_table(container, len(listed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
