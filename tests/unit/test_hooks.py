"""hooks: the maintainer-script entry point refuses anything but 'configure'."""

from __future__ import annotations

import pytest

from matrix_stack.hooks import main


@pytest.mark.parametrize("argv", [[], ["remove"], ["Configure"]])
def test_main_without_configure_exits_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == "usage: matrix-stack hook configure\n"
