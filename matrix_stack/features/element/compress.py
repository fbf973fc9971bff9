"""Compress an Element release's text files once, at install time, for Apache to serve."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

from matrix_stack.core.render import PRECOMPRESSED_TYPES

SUFFIXES = {f".{extension}" for extension, _ in PRECOMPRESSED_TYPES}
# Below this, compression saves less than the headers cost.
MINIMUM_SIZE = 512
# 9 is within 15% of 11 in size and ~20 times faster (a full Element build: seconds).
BROTLI_QUALITY = 9


def _brotli() -> Callable[[bytes], bytes] | None:
    """Return brotli compression when python3-brotli (Recommends) is there, else None."""
    try:
        import brotli
    except ImportError:
        return None

    def squeeze(data: bytes) -> bytes:
        return bytes(brotli.compress(data, quality=BROTLI_QUALITY))

    return squeeze


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
    os.chmod(path, 0o644)


def precompress(directory: Path) -> tuple[int, int, int]:
    """Write FILE.gz (and FILE.br with python3-brotli) beside each compressible file.

    A copy that would not be smaller is not written. Return (files, bytes, compressed bytes
    of the best copies).
    """
    squeeze = _brotli()
    files = total = best_total = 0
    for path in sorted(directory.rglob("*")):
        if path.suffix not in SUFFIXES or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if len(data) < MINIMUM_SIZE:
            continue
        best = len(data)
        packed = gzip.compress(data, compresslevel=9, mtime=0)
        if len(packed) < len(data):
            _write(path.with_name(path.name + ".gz"), packed)
            best = len(packed)
        if squeeze is not None:
            squeezed = squeeze(data)
            if len(squeezed) < best:
                _write(path.with_name(path.name + ".br"), squeezed)
                best = len(squeezed)
        files += 1
        total += len(data)
        best_total += best
    return files, total, best_total
