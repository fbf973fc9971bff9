"""cli: matrix-stack-admin's argument parsing and exit codes (usage errors exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_stack import __version__
from matrix_stack.cli.main import COMMANDS, PROGRAM, build_parser, main, run_apply


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

    from matrix_stack.cli.main import COMMANDS, build_parser

    subparsers = next(
        action for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert {name: summary for name, (_, summary) in COMMANDS.items()} == {
        name: helps[name] for name in COMMANDS
    }


def modules_imported(program: str) -> set[str]:
    """Return the modules a fresh Python imports to run program, beyond what it starts with
    (site's .pth files import modules of their own)."""
    import subprocess
    import sys

    found = []
    for source in ("pass", program):
        result = subprocess.run(
            [sys.executable, "-c", f"{source}\nimport sys; print(' '.join(sys.modules))"],
            capture_output=True, text=True, check=True,
        )
        found.append(set(result.stdout.split()))
    return found[1] - found[0]


# What no command needs to build its arguments: each costs milliseconds of start-up.
SLOW_TO_IMPORT = {
    "typing", "json", "datetime", "pathlib", "urllib.parse", "urllib.request", "http.client",
    "email", "ssl", "socket", "dataclasses", "inspect", "ipaddress", "shutil", "tempfile",
    "subprocess", "yaml", "jinja2", "requests", "debian", "bcrypt", "hashlib",
}


PACKAGE = Path(__file__).resolve().parents[3] / "matrix_stack"
# The layer packages (matrix_stack.cli, .base, ...): empty, imported with their modules.
PACKAGES = {".".join(("matrix_stack", *path.parent.relative_to(PACKAGE).parts))
            for path in PACKAGE.rglob("__init__.py")}


def ours(found: set[str]) -> set[str]:
    """Return the package's modules among found, leaving out its (empty) packages."""
    return {name for name in found if name.startswith("matrix_stack.") and name not in PACKAGES}


def test_the_top_level_parser_imports_no_command_module() -> None:
    found = modules_imported(
        "from matrix_stack.cli.main import build_parser; build_parser(['--help'])")

    assert sorted(name for name in ours(found)) == [
        "matrix_stack.base.errors", "matrix_stack.cli.argument_parser",
        "matrix_stack.cli.help_cache", "matrix_stack.cli.main",
    ]
    assert found & SLOW_TO_IMPORT == set()


@pytest.mark.parametrize("command", ["apply", *COMMANDS])
def test_each_command_builds_its_arguments_without_slow_imports(command: str) -> None:
    found = modules_imported(
        f"from matrix_stack.cli.main import build_parser; build_parser([{command!r}])"
    )

    # backup DIR and restore ARCHIVE are parsed into pathlib paths (which import these).
    paths = {"pathlib", "urllib.parse", "ipaddress"}
    allowed = paths if command in ("backup", "restore") else set()
    assert found & SLOW_TO_IMPORT <= allowed
    own = {f"matrix_stack.{COMMANDS[command][0]}"} if command in COMMANDS else set()
    shared = {"matrix_stack.cli.user_args", "matrix_stack.cli.user_names",
              "matrix_stack.cli.user_changes"}
    assert {name for name in ours(found)} - own - shared == {
        "matrix_stack.base.errors", "matrix_stack.cli.argument_parser",
        "matrix_stack.cli.help_cache", "matrix_stack.cli.main",
    }


def test_cached_help_is_argparses_own_and_printed_without_argparse(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    program = (
        "import sys; from matrix_stack.cli import help_cache; "
        f"help_cache.HELP_PATH = {str(tmp_path)!r} + '/help-{{columns}}'; "
        "from matrix_stack.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as done:\n"
        "    print('argparse' in sys.modules, done.code, file=sys.stderr)"
    )
    environment = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "100"}

    def run() -> tuple[str, str]:
        result = subprocess.run([sys.executable, "-c", program], env=environment,
                                capture_output=True, text=True, check=True)
        return result.stdout, result.stderr.strip()

    first, second = run(), run()
    environment["COLUMNS"] = "60"
    narrow = run()

    expected = build_parser(["--help"])
    assert first == (second[0], "True 0")
    assert second[1] == "False 0", "the second --help is printed from the cache"
    assert narrow[1] == "True 0", "another width is a miss"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["help-100", "help-60"]
    os.environ["COLUMNS"] = "100"
    try:
        assert first[0] == expected.format_help()
    finally:
        del os.environ["COLUMNS"]
    assert narrow[0] != first[0]
    assert max(len(line) for line in narrow[0].splitlines()) <= 58


def test_help_key_changes_with_the_width_and_the_modules_making_the_parser(
    tmp_path: Path,
) -> None:
    import os

    from matrix_stack.cli.help_cache import help_key

    module = tmp_path / "cli.py"
    module.write_text("x = 1\n")
    os.utime(module, ns=(0, 0))
    before = help_key(80, [str(module)])
    assert before == help_key(80, [str(module)])
    assert before != help_key(100, [str(module)])
    module.write_text("x = 2\n")
    os.utime(module, ns=(0, 0))
    assert help_key(80, [str(module)]) != before, "the same size and time, another text"
    assert help_key(80, [str(tmp_path / "missing.py")]) == "", "no key, no cache"


def test_a_kept_help_under_another_key_is_not_printed(tmp_path: Path) -> None:
    from matrix_stack.cli.help_cache import cached_help, keep_help

    path = str(tmp_path / "help-80")
    keep_help(path, "key one", "usage: one\n")

    assert cached_help(path, "key one") == "usage: one\n"
    assert cached_help(path, "key two") is None
    assert cached_help(path, "") is None


def test_terminal_columns_is_what_argparse_would_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from matrix_stack.cli.help_cache import terminal_columns

    for value in ("", "0", "x", "132", "-3"):
        monkeypatch.setenv("COLUMNS", value)
        assert terminal_columns() == shutil.get_terminal_size().columns


def test_the_user_name_cache_is_root_only_and_follows_changes(tmp_path: Path) -> None:
    from matrix_stack.cli import user_names

    cache = tmp_path / "user-names"
    user_names.update(add="zoe", path=cache)
    assert not cache.exists(), "only a full user list makes the cache"
    user_names.remember(["bob", "alice", "bob"], cache)
    assert cache.read_text() == "alice\nbob\n"
    assert cache.stat().st_mode & 0o777 == 0o600
    user_names.update(add="zoe", path=cache)
    user_names.update(remove="bob", path=cache)
    assert user_names.read(cache) == {"alice", "zoe"}


def test_the_help_cache_lies_where_purge_removes_it() -> None:
    from matrix_stack.base import paths
    from matrix_stack.cli import help_cache

    assert str(paths.STATE_DIR) == help_cache.STATE_DIR


def test_a_commands_help_is_kept_too_and_only_for_a_command(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    kept = tmp_path / "kept"
    kept.mkdir()

    def run(*words: str, cache: Path = kept) -> tuple[str, str]:
        program = (
            "import sys; from matrix_stack.cli import help_cache; "
            f"help_cache.HELP_PATH = {str(cache)!r} + '/help-{{columns}}'; "
            "from matrix_stack.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n"
            "    print('argparse' in sys.modules, done.code, file=sys.stderr)"
        )
        result = subprocess.run(
            [sys.executable, "-c", program, *words], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(root), "COLUMNS": "90"})
        return result.stdout, result.stderr.strip().splitlines()[-1]

    # argparse's own text: no directory to keep anything in.
    plain = run("user", "add", "--help", cache=tmp_path / "none")
    first, second = run("user", "add", "--help"), run("user", "add", "-h")

    assert plain[0].startswith("usage: matrix-stack-admin user add ")
    assert first == (plain[0], "True 0")
    assert second == (plain[0], "False 0"), "printed from what the first run kept"
    assert run("user", "deactivate", "alice", "--help")[0].startswith(
        "usage: matrix-stack-admin user deactivate ")
    assert run("user", "--help")[1] == "True 0"
    assert run("user", "bogus", "--help") == ("", "True 2"), "argparse's usage error, as before"
    assert sorted(path.name for path in kept.iterdir()) == ["help-90.user", "help-90.user.add"]
