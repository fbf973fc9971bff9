"""run: argv lists only, output captured, one-line errors with secrets masked."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from matrix_stack.base.errors import CommandError
from matrix_stack.base.run import last_line, mask_argv, run, run_streaming


def test_run_captures_output_as_text() -> None:
    result = run(["/bin/sh", "-c", "echo out; echo err >&2"])

    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_run_passes_input_text() -> None:
    assert run(["cat"], input_text="line\n").stdout == "line\n"


def test_run_failing_raises_with_argv_status_and_last_error_line() -> None:
    with pytest.raises(CommandError) as caught:
        run(["/bin/sh", "-c", "echo first >&2; echo last >&2; exit 3"])

    assert str(caught.value) == (
        "/bin/sh -c echo first >&2; echo last >&2; exit 3 failed (exit 3): last"
    )


def test_run_failing_masks_secrets_in_argv_and_output() -> None:
    with pytest.raises(CommandError) as caught:
        run(["/bin/sh", "-c", 'echo "bad $0" >&2; exit 1', "s3cret"], secrets=["s3cret"])

    assert "s3cret" not in str(caught.value)
    assert str(caught.value).endswith("*** failed (exit 1): bad ***")


def test_run_without_check_returns_the_failure() -> None:
    assert run(["/bin/sh", "-c", "exit 4"], check=False).returncode == 4


def test_run_of_missing_program_says_it_is_not_installed() -> None:
    with pytest.raises(CommandError, match=r"^/nonexistent/tool is not installed \("):
        run(["/nonexistent/tool"])


def test_run_past_its_timeout_raises() -> None:
    with pytest.raises(CommandError) as caught:
        run(["sleep", "5"], timeout=0.1)

    assert str(caught.value) == "sleep 5 did not finish in 0.1 s"


def test_mask_argv_replaces_every_secret_and_ignores_empty_ones() -> None:
    assert mask_argv(["tool", "--key=abc", "abcabc"], ["abc", ""]) == "tool --key=*** ******"


def test_last_line_skips_blank_lines_and_says_when_there_is_none() -> None:
    assert last_line("one\ntwo\n\n  \n") == "two"
    assert last_line(" \n") == "no output"


def test_run_streaming_moves_binary_data_both_ways(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(data)
    with source.open("rb") as stdin, target.open("wb") as stdout:
        run_streaming(["cat"], stdin=stdin, stdout=stdout)
    assert target.read_bytes() == data


def test_run_streaming_failing_raises_with_its_last_error_line_masked() -> None:
    with pytest.raises(CommandError) as raised:
        run_streaming(["sh", "-c", "echo first >&2; echo 'bad s3cret' >&2; exit 4"],
                      secrets=["s3cret"])
    assert str(raised.value) == "sh failed (exit 4): bad ***"


def test_run_streaming_past_its_timeout_raises(tmp_path: Path) -> None:
    with (tmp_path / "out").open("wb") as stdout, pytest.raises(CommandError,
                                                                  match="did not finish"):
        run_streaming(["sleep", "5"], stdout=stdout, timeout=0.2)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_user_gets_that_users_identity_and_home() -> None:
    entry = pwd.getpwnam("nobody")
    result = run(["sh", "-c", 'id -u; id -G; echo "$HOME $USER $LOGNAME"'], user="nobody")
    uid, groups, environment = result.stdout.splitlines()
    assert (int(uid), groups.split()) == (entry.pw_uid, [str(entry.pw_gid)])
    assert environment == f"{entry.pw_dir} nobody nobody"


def test_run_as_a_user_that_does_not_exist_is_a_command_error() -> None:
    # As runuser's refusal was: callers that turn a failed command into a reason still do.
    with pytest.raises(CommandError, match="psql not run: the user no-such-user-here does not"):
        run(["psql"], user="no-such-user-here")
    with pytest.raises(CommandError, match="pg_dump not run: the user no-such-user-here"):
        run_streaming(["pg_dump"], user="no-such-user-here")
