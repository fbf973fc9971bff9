"""make bench: install-to-first-answer time and the cost of a no-change apply, in a booted sid.

Numbers are printed, never asserted. Goal for a no-change apply: under 1 s, restarting nothing.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from tests.system import stack
from tests.system.testbed import Container, cleanup_stale, ensure_base_tarball

RUNS = 10


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown CPU",
    )
    python = platform.python_version()
    return f"{os.cpu_count()} x {cpu}, kernel {platform.release()}, host Python {python}"


def main() -> int:
    cleanup_stale()
    deb = Path(os.environ["MATRIX_STACK_DEB"])
    print(f"machine: {machine()}")
    with Container(ensure_base_tarball(), name="bench", hostname=stack.SERVER) as container:
        container.boot()
        container.copy_in(deb, f"/srv/{deb.name}")
        started = time.monotonic()
        container.run([*stack.APT, "install", f"/srv/{deb.name}"], timeout=900)
        installed = time.monotonic()
        stack.wait_for_client_api(container)
        answered = time.monotonic()
        print(f"apt-get install of {deb.name}: {installed - started:.2f} s")
        print(f"install start -> /_matrix/client/versions 200 through Apache: "
              f"{answered - started:.2f} s")
        timings = []
        with stack.unit_runs(container, ("matrix-synapse", "coturn", "apache2")) as changed:
            for _ in range(RUNS):
                begin = time.monotonic()
                result = container.run(["matrix-stack-admin", "apply"])
                timings.append(time.monotonic() - begin)
                assert result.stdout.strip() == "nothing changed", result.stdout
        print(f"no-change matrix-stack-admin apply ({RUNS} runs, including nsenter): "
              f"median {statistics.median(timings):.3f} s, max {max(timings):.3f} s "
              f"(goal < 1 s); restarted: {[u for u, c in changed.items() if c] or 'nothing'}")
        python = container.run(["python3", "--version"]).stdout.strip()
        print(f"container: Debian sid, {python}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"bench failed: {error}") from None
