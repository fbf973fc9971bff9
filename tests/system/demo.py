"""make demo / demo-stop: a throwaway Debian 13 (or sid) running the stack on its defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.system import stack
from tests.system.testbed import Container, cleanup_stale, current_target, ensure_base_tarball

HOSTNAME = stack.SERVER


def start() -> int:
    cleanup_stale()
    deb = Path(os.environ["MATRIX_STACK_DEB"])
    target = current_target()
    container = Container(ensure_base_tarball(target=target), name="demo", hostname=HOSTNAME)
    try:
        print(f"demo: booting {target.description} with systemd-nspawn ...", flush=True)
        container.boot()
        print(f"demo: installing {deb.name} with apt (defaults, no preseed) ...", flush=True)
        stack.install(container, deb)
        stack.wait_for_client_api(container)
    except BaseException:
        container.close()
        raise
    directory = container.detach()
    ca = container.path(stack.SELF_SIGNED_CERT)
    print(f"""
The stack runs in {directory} (sharing this host's network).
  Client API:  curl --cacert {ca} --resolve {HOSTNAME}:443:127.0.0.1 \\
                   https://{HOSTNAME}/_matrix/client/versions
  Federation:  curl --cacert {ca} --resolve {HOSTNAME}:8448:127.0.0.1 \\
                   https://{HOSTNAME}:8448/_matrix/federation/v1/version
  Element:     https://element.{HOSTNAME}/ (add "127.0.0.1 {HOSTNAME} element.{HOSTNAME}"
               to /etc/hosts to open it in a browser; the certificate is self-signed)
  A shell:     nsenter -t {container.pid1} -a bash
  Stop it:     make demo-stop
""")
    return 0


def stop() -> int:
    removed = cleanup_stale()
    print("demo: stopped and removed" if removed else "demo: nothing was running")
    return 0


if __name__ == "__main__":
    commands = {"start": start, "stop": stop}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print("usage: python -m tests.system.demo start|stop", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]]())
