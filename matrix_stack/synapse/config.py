"""Read Synapse's configuration merged exactly as Synapse merges it.

Debian's matrix-synapse.service runs Synapse with ``--config-path homeserver.yaml
--config-path conf.d/``. Synapse (synapse/config/_base.py, ``find_config_files`` and
``read_config_files``) expands a directory to its ``*.yaml`` files in sorted order, skipping
subdirectories and other names, then merges the files with a shallow ``dict.update``: a later
file replaces a whole top-level key. A file that does not parse into a mapping is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import host_path
from matrix_stack.base.paths import CONF_D_PATH, HOMESERVER_PATH


def find_config_files(root: Path = Path("/")) -> list[Path]:
    """Return the files Synapse reads, in its order, as paths on the target system."""
    files = [HOMESERVER_PATH]
    directory = host_path(CONF_D_PATH, root)
    if directory.is_dir():
        # os.path.isfile in Synapse: follows symbolic links, so a dangling link is skipped.
        names = [
            entry.name
            for entry in directory.iterdir()
            if entry.is_file() and entry.name.endswith(".yaml")
        ]
        files.extend(CONF_D_PATH / name for name in sorted(names))
    return files


def read_config_file(path: Path, root: Path = Path("/")) -> Any:
    """Return the YAML value of one configuration file, raising one line if it is unreadable."""
    try:
        with host_path(path, root).open(encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    except FileNotFoundError:
        if path == HOMESERVER_PATH:
            raise MatrixStackError(
                f"Synapse's configuration {path} is missing; is matrix-synapse installed?"
            ) from None
        raise MatrixStackError(f"Synapse's configuration {path} is missing") from None
    except OSError as error:
        raise MatrixStackError(
            f"cannot read Synapse's configuration {path}: {error.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise MatrixStackError(f"Synapse's configuration {path} is not UTF-8 text") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = error.problem or error.context or "invalid YAML"
        raise MatrixStackError(f"{path} is not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as error:
        first_line = str(error).splitlines()[0] if str(error) else "invalid YAML"
        raise MatrixStackError(f"{path} is not valid YAML: {first_line}") from None


def read_merged_config(root: Path = Path("/")) -> dict[str, Any]:
    """Return homeserver.yaml and conf.d/*.yaml shallowly merged, later files winning."""
    merged: dict[str, Any] = {}
    for path in find_config_files(root):
        value = read_config_file(path, root)
        if isinstance(value, dict):
            merged.update(value)
    return merged
