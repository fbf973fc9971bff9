"""cli: matrix-stack-admin's argument parsing and exit codes (usage errors exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_stack import __version__
from matrix_stack.cli import PROGRAM, build_parser, main, run_apply


def test_apply_dry_run_parses_to_the_apply_handler() -> None:
    arguments = build_parser().parse_args(["apply", "--dry-run"])

    assert (arguments.command, arguments.dry_run, arguments.handler) == ("apply", True, run_apply)


def test_apply_without_options_is_not_a_dry_run() -> None:
    assert build_parser().parse_args(["apply"]).dry_run is False


def test_unknown_command_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])

    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"usage: {PROGRAM} ")
    assert "invalid choice: 'frobnicate'" in error


def test_missing_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])

    assert caught.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_unknown_option_of_apply_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["apply", "--force"])

    assert caught.value.code == 2
    assert "unrecognized arguments: --force" in capsys.readouterr().err


def test_help_exits_0_and_lists_apply_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])

    assert caught.value.code == 0
    output = capsys.readouterr().out
    assert "apply" in output
    assert "Exit status: 0 success, 1 the operation failed, 2 usage error." in output


def test_version_prints_program_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])

    assert caught.value.code == 0
    assert capsys.readouterr().out == f"{PROGRAM} {__version__}\n"


def test_lazy_command_summaries_equal_the_modules_own() -> None:
    import argparse

    from matrix_stack.cli import COMMANDS, build_parser

    subparsers = next(
        action for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert {name: summary for name, (_, summary) in COMMANDS.items()} == {
        name: helps[name] for name in COMMANDS
    }


def test_running_one_command_imports_only_its_module() -> None:
    import subprocess
    import sys

    program = (
        "import sys; from matrix_stack.cli import build_parser; build_parser(['--help']); "
        "print(sorted(m for m in sys.modules if m.startswith('matrix_stack.')))"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "['matrix_stack.cli', 'matrix_stack.errors']"


def test_the_user_name_cache_is_root_only_and_follows_changes(tmp_path: Path) -> None:
    from matrix_stack import user_names

    cache = tmp_path / "user-names"
    user_names.update(add="zoe", path=cache)
    assert not cache.exists(), "only a full user list makes the cache"
    user_names.remember(["bob", "alice", "bob"], cache)
    assert cache.read_text() == "alice\nbob\n"
    assert cache.stat().st_mode & 0o777 == 0o600
    user_names.update(add="zoe", path=cache)
    user_names.update(remove="bob", path=cache)
    assert user_names.read(cache) == {"alice", "zoe"}
