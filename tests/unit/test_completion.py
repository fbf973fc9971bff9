"""The generated bash completion offers what --help lists, at every level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "matrix-stack-admin"
    generated = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "completion.py")],
        env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True,
    )
    path.write_text(generated.stdout)
    return path


def complete(script: Path, *words: str) -> list[str]:
    array = " ".join(f"'{word}'" for word in ("matrix-stack-admin", *words))
    program = (
        f"source '{script}'; COMP_WORDS=({array}); COMP_CWORD={len(words)}; "
        '_matrix_stack_admin; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_completion_is_valid_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_top_level_offers_the_commands(script: Path) -> None:
    assert {"apply", "user", "passwd", "token"} <= set(complete(script, ""))


def test_subcommands_complete_from_a_prefix(script: Path) -> None:
    assert complete(script, "user", "mo") == ["modify"]


def test_options_of_the_command_being_typed(script: Path) -> None:
    assert complete(script, "passwd", "alice", "--o") == ["--offline"]
    assert "--reactivate" in complete(script, "user", "modify", "alice", "--")


@pytest.fixture()
def with_users(script: Path, tmp_path: Path) -> Path:
    """The script reading a cache of local user names at a path of the test's own."""
    cache = tmp_path / "user-names"
    cache.write_text("alice\nalan\nbob\n")
    text = script.read_text().replace("/var/lib/matrix-stack/user-names", str(cache))
    assert str(cache) in text
    path = tmp_path / "completion"
    path.write_text(text)
    return path


def test_commands_about_a_user_complete_local_names(with_users: Path) -> None:
    assert sorted(complete(with_users, "passwd", "al")) == ["alan", "alice"]
    assert complete(with_users, "user", "show", "b") == ["bob"]
    assert {"alan", "alice", "bob", "--yes"} <= set(complete(with_users, "user", "deactivate", ""))


def test_names_are_not_offered_where_no_user_is_named(with_users: Path) -> None:
    assert complete(with_users, "user", "add", "al") == []  # a new account
    assert complete(with_users, "passwd", "alice", "al") == []  # the name is given
    assert complete(with_users, "token", "al") == []


def test_without_a_readable_cache_nothing_is_offered(with_users: Path, tmp_path: Path) -> None:
    (tmp_path / "user-names").unlink()
    assert complete(with_users, "passwd", "al") == []
