"""How long each phase of a configuration takes, said when MATRIX_STACK_PHASES is set.

make bench sets it for the install it times (apt-get passes the environment down to the
postinst); otherwise nothing is printed and nothing is measured.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENVIRONMENT = "MATRIX_STACK_PHASES"


# The phases open now, outermost first: a nested phase is named with its parents.
_OPEN: list[str] = []


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block; print 'matrix-stack: phase NAME: S s' on stderr when asked to (NAME of a
    nested phase: 'OUTER > NAME')."""
    if not os.environ.get(ENVIRONMENT):
        yield
        return
    _OPEN.append(name)
    started = time.monotonic()
    try:
        yield
    finally:
        print(f"matrix-stack: phase {' > '.join(_OPEN)}: {time.monotonic() - started:.2f} s",
              file=sys.stderr, flush=True)
        _OPEN.pop()
