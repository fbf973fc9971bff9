"""phases: a configuration's phases are timed and said only when MATRIX_STACK_PHASES is set."""

from __future__ import annotations

import re

import pytest

from matrix_stack.base.phases import ENVIRONMENT, phase


def test_nothing_is_said_without_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)

    with phase("render"):
        pass

    assert capsys.readouterr() == ("", "")


def test_each_phase_is_said_with_its_duration_even_when_it_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENVIRONMENT, "1")

    with phase("configure"):
        with phase("render"):
            pass
        with pytest.raises(RuntimeError), phase("restart matrix-synapse"):
            raise RuntimeError
    with phase("Element"):
        pass

    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r"\d+\.\d\d", "N", line) for line in lines] == [
        "matrix-stack: phase configure > render: N s",
        "matrix-stack: phase configure > restart matrix-synapse: N s",
        "matrix-stack: phase configure: N s",
        "matrix-stack: phase Element: N s",
    ]


def test_each_program_run_is_a_phase_named_by_its_first_line_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from matrix_stack.base.run import run

    monkeypatch.setenv(ENVIRONMENT, "1")

    with phase("check"):
        run(["sh", "-c", "true s3cret\nexit 0", "s3cret"], secrets=["s3cret"])

    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r"\d+\.\d\d", "N", line) for line in lines] == [
        "matrix-stack: phase check > run sh -c true ***: N s",
        "matrix-stack: phase check: N s",
    ]
