"""The debconf templates are translatable, the catalogue is current and French is complete."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEBIAN = Path(__file__).resolve().parents[2] / "debian"


def test_every_template_text_is_marked_translatable() -> None:
    fields = re.findall(r"^(_*)(Description|Choices):", (DEBIAN / "matrix-stack.templates")
                        .read_text(), re.M)
    assert fields and all(prefix for prefix, _ in fields), fields


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="gettext is not installed")
def test_french_translation_is_complete() -> None:
    result = subprocess.run(
        ["msgfmt", "--statistics", "--check", "-o", "/dev/null", str(DEBIAN / "po" / "fr.po")],
        capture_output=True, text=True, check=True,
    )
    assert re.fullmatch(r"\d+ translated messages\.\n", result.stderr), result.stderr


@pytest.mark.skipif(shutil.which("po2debconf") is None, reason="po-debconf is not installed")
def test_templates_pot_is_up_to_date_with_the_templates(tmp_path: Path) -> None:
    copy = tmp_path / "debian"
    shutil.copytree(DEBIAN, copy, ignore=shutil.ignore_patterns("matrix-stack", ".debhelper"))
    subprocess.run(["debconf-updatepo"], cwd=copy, check=True, capture_output=True)

    def messages(path: Path) -> list[str]:
        return re.findall(r'^msgid "(.*)"', path.read_text(), re.M)

    assert messages(copy / "po" / "templates.pot") == messages(DEBIAN / "po" / "templates.pot")
    assert messages(copy / "po" / "fr.po") == messages(DEBIAN / "po" / "fr.po")
