"""Tests for synapse_config: the merge must be Synapse's own (synapse/config/_base.py)."""

from __future__ import annotations

import ast
import os
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import CONF_D_PATH, HOMESERVER_PATH
from matrix_stack.synapse.config import (
    find_config_files,
    read_merged_config,
)


def synapse_package() -> Path | None:
    """Return the synapse package of an extracted Debian sid test root, newest first."""
    roots = Path("/var/cache/matrix-stack-tests").glob("sid-*.d/usr/lib/python3/dist-packages")
    found = [root / "synapse" for root in roots if (root / "synapse/config/_base.py").is_file()]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


SYNAPSE = synapse_package()
needs_synapse_source = pytest.mark.skipif(
    SYNAPSE is None, reason="no extracted Debian sid test root with matrix-synapse"
)


def write(root: Path, path: Path | str, text: str) -> Path:
    """Write text at the target path under root and return the host path."""
    host = root / str(path).lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    host.write_text(text, encoding="utf-8")
    return host


def make_conf_d(root: Path) -> None:
    """Lay out a homeserver.yaml and a conf.d with overlapping keys and names to skip."""
    write(
        root,
        HOMESERVER_PATH,
        "server_name: from-homeserver\nreport_stats: false\n"
        "database:\n  name: sqlite3\n  args:\n    database: /var/lib/matrix-synapse/homeserver.db\n"
        "bcrypt_rounds: 10\nonly_in_homeserver: 1\n",
    )
    write(root, CONF_D_PATH / "10-a.yaml", "server_name: from-10-a\nfirst: 10-a\n")
    write(root, CONF_D_PATH / "50-b.yaml", "server_name: from-50-b\ndatabase:\n  name: psycopg2\n")
    write(root, CONF_D_PATH / "Z.yaml", "server_name: from-Z\nbcrypt_rounds: 4\n")
    write(root, CONF_D_PATH / "a.yaml", "server_name: from-a\n")
    write(root, CONF_D_PATH / "empty.yaml", "")
    write(root, CONF_D_PATH / "list.yaml", "- server_name: from-list\n")
    write(root, CONF_D_PATH / "other.yml", "server_name: from-yml\n")
    write(root, CONF_D_PATH / "README", "server_name: from-readme\n")
    write(root, CONF_D_PATH / "sub.yaml/inner.yaml", "server_name: from-subdirectory\n")
    (root / "etc/matrix-synapse/conf.d/dangling.yaml").symlink_to("nowhere.yaml")


def test_find_config_files_lists_homeserver_then_conf_d_yaml_files_sorted(tmp_path: Path) -> None:
    make_conf_d(tmp_path)
    assert find_config_files(tmp_path) == [
        HOMESERVER_PATH,
        CONF_D_PATH / "10-a.yaml",
        CONF_D_PATH / "50-b.yaml",
        CONF_D_PATH / "Z.yaml",
        CONF_D_PATH / "a.yaml",
        CONF_D_PATH / "empty.yaml",
        CONF_D_PATH / "list.yaml",
    ]


def test_read_merged_config_with_overlapping_keys_lets_the_last_file_win(tmp_path: Path) -> None:
    make_conf_d(tmp_path)
    assert read_merged_config(tmp_path) == {
        "server_name": "from-a",
        "report_stats": False,
        # Shallow: 50-b's database block replaces homeserver.yaml's whole block.
        "database": {"name": "psycopg2"},
        "bcrypt_rounds": 4,
        "only_in_homeserver": 1,
        "first": "10-a",
    }


def test_read_merged_config_with_a_symlinked_file_reads_its_target(tmp_path: Path) -> None:
    write(tmp_path, HOMESERVER_PATH, "bcrypt_rounds: 12\n")
    target = write(tmp_path, "srv/rounds.yaml", "bcrypt_rounds: 6\n")
    write(tmp_path, CONF_D_PATH / "00-first.yaml", "bcrypt_rounds: 5\n")
    (tmp_path / "etc/matrix-synapse/conf.d/50-link.yaml").symlink_to(target)
    assert read_merged_config(tmp_path) == {"bcrypt_rounds": 6}


def test_read_merged_config_without_conf_d_reads_homeserver_yaml_only(tmp_path: Path) -> None:
    write(tmp_path, HOMESERVER_PATH, "server_name: example.org\n")
    assert find_config_files(tmp_path) == [HOMESERVER_PATH]
    assert read_merged_config(tmp_path) == {"server_name": "example.org"}


def test_read_merged_config_with_empty_homeserver_yaml_uses_conf_d(tmp_path: Path) -> None:
    write(tmp_path, HOMESERVER_PATH, "# all commented out\n")
    write(tmp_path, CONF_D_PATH / "server_name.yaml", "server_name: example.org\n")
    assert read_merged_config(tmp_path) == {"server_name": "example.org"}


def test_read_merged_config_without_homeserver_yaml_says_to_install_synapse(
    tmp_path: Path,
) -> None:
    write(tmp_path, CONF_D_PATH / "a.yaml", "server_name: example.org\n")
    with pytest.raises(MatrixStackError) as raised:
        read_merged_config(tmp_path)
    assert str(raised.value) == (
        "Synapse's configuration /etc/matrix-synapse/homeserver.yaml is missing; "
        "is matrix-synapse installed?"
    )


def test_read_merged_config_with_a_yaml_error_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, HOMESERVER_PATH, "server_name: example.org\n")
    write(tmp_path, CONF_D_PATH / "50-b.yaml", "# comment\nfirst: 1\nsecond: [unclosed\nthird: 3\n")
    with pytest.raises(MatrixStackError) as raised:
        read_merged_config(tmp_path)
    message = str(raised.value)
    assert message.startswith("/etc/matrix-synapse/conf.d/50-b.yaml is not valid YAML at line ")
    assert "\n" not in message


def test_read_merged_config_with_a_bad_mapping_line_names_that_line(tmp_path: Path) -> None:
    write(tmp_path, HOMESERVER_PATH, "server_name: example.org\nreport_stats: false\na: b: c\n")
    with pytest.raises(MatrixStackError) as raised:
        read_merged_config(tmp_path)
    assert str(raised.value) == (
        "/etc/matrix-synapse/homeserver.yaml is not valid YAML at line 3: "
        "mapping values are not allowed here"
    )


def test_read_merged_config_with_a_file_not_in_utf8_says_so(tmp_path: Path) -> None:
    write(tmp_path, HOMESERVER_PATH, "server_name: example.org\n")
    write(tmp_path, CONF_D_PATH / "latin1.yaml", "").write_bytes(b"x: caf\xe9\n")
    with pytest.raises(MatrixStackError) as raised:
        read_merged_config(tmp_path)
    assert str(raised.value) == (
        "Synapse's configuration /etc/matrix-synapse/conf.d/latin1.yaml is not UTF-8 text"
    )


def load_synapse_functions(names: Iterable[str]) -> dict[str, Callable[..., Any]]:
    """Return the named module-level functions of Synapse's config/_base.py, compiled here.

    Importing synapse.config needs Twisted and Python 3.14 (the sid root's); these two
    functions need only os and yaml, so their text is run as it is.
    """
    assert SYNAPSE is not None
    text = (SYNAPSE / "config/_base.py").read_text(encoding="utf-8")
    wanted = set(names)
    namespace: dict[str, Any] = {
        "os": os,
        "yaml": yaml,
        "Any": Any,
        "Iterable": Iterable,
        "ConfigError": MatrixStackError,
        "MISSING_SERVER_NAME": "server_name missing",
        "MISSING_REPORT_STATS_CONFIG_INSTRUCTIONS": "report_stats missing",
        "MISSING_REPORT_STATS_SPIEL": "",
    }
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name in wanted:
            segment = ast.get_source_segment(text, node, padded=True)
            assert segment is not None
            exec(textwrap.dedent(segment), namespace)
            wanted.discard(node.name)
    assert not wanted, f"not in Synapse's config/_base.py: {wanted}"
    return {name: namespace[name] for name in names}


@needs_synapse_source
def test_read_merged_config_equals_synapse_own_merge_of_the_same_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_conf_d(tmp_path)
    synapse = load_synapse_functions(["find_config_files", "read_config_files"])
    etc = tmp_path / "etc/matrix-synapse"
    # The arguments of Debian's matrix-synapse.service, rooted in tmp_path.
    files = synapse["find_config_files"]([f"{etc}/homeserver.yaml", f"{etc}/conf.d/"])
    capsys.readouterr()  # Synapse prints what it skips
    assert files == [str(tmp_path / str(path).lstrip("/")) for path in find_config_files(tmp_path)]
    assert synapse["read_config_files"](files) == read_merged_config(tmp_path)
