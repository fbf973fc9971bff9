"""Element's text files are compressed once, beside the originals, only when it pays."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from matrix_stack.features.element.compress import MINIMUM_SIZE, precompress

TEXT = b"".join(b"function f%d() { return %d; }\n" % (index, index) for index in range(200))


def test_precompress_writes_gzip_and_brotli_copies_that_decode_to_the_original(
    tmp_path: Path,
) -> None:
    brotli = pytest.importorskip("brotli")
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "app.js").write_bytes(TEXT)

    files, total, best = precompress(tmp_path)

    assert gzip.decompress((tmp_path / "bundles" / "app.js.gz").read_bytes()) == TEXT
    assert brotli.decompress((tmp_path / "bundles" / "app.js.br").read_bytes()) == TEXT
    assert (files, total) == (1, len(TEXT))
    assert best == (tmp_path / "bundles" / "app.js.br").stat().st_size < total
    assert (tmp_path / "bundles" / "app.js.gz").stat().st_mode & 0o777 == 0o644


def test_precompress_leaves_small_binary_and_incompressible_files_alone(tmp_path: Path) -> None:
    (tmp_path / "tiny.js").write_bytes(b"x" * (MINIMUM_SIZE - 1))
    (tmp_path / "image.png").write_bytes(TEXT)
    (tmp_path / "random.css").write_bytes(os.urandom(4096))  # grows when compressed

    precompress(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "image.png", "random.css", "tiny.js"]


def test_precompress_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_bytes(TEXT)
    precompress(tmp_path)
    first = (tmp_path / "index.html.gz").read_bytes()
    precompress(tmp_path)

    assert (tmp_path / "index.html.gz").read_bytes() == first
