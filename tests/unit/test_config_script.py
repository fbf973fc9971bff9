"""The config script's own validation (POSIX sh), run with sh on the functions it defines."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "debian" / "matrix-stack.config"


def functions() -> str:
    """Return the definitions of is_dns_name, is_email, is_ip and reason from the config script."""
    text = CONFIG.read_text(encoding="utf-8")
    found = [re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.M | re.S)
             for name in ("is_dns_name", "is_email", "is_ip", "reason")]
    assert all(found)
    return "".join(match.group(0) for match in found if match)


def reason(question: str, value: str) -> str:
    script = functions() + 'reason "$1" "$2"\n'
    result = subprocess.run(["sh", "-c", script, "sh", question, value],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("question", "value"),
    [("database-host", ""), ("database-host", "db.example.org"), ("database-host", "10.0.0.5"),
     ("database-port", "5432"), ("database-port", "65535"), ("database-name", "matrix_synapse"),
     ("database-user", "synapse-user"), ("database-password", ""), ("server-name", "a.example"),
     ("mail-from", "Matrix <noreply@example.org>"), ("mail-from", "noreply@example.org"),
     ("mail-relay-host", "smtp.example.org"), ("mail-relay-host", "192.0.2.25"),
     ("mail-relay-port", "587"), ("mail-relay-user", "matrix@example.org"),
     ("mail-relay-user", ""), ("mail-relay-password", "secret"), ("admin-email", ""),
     ("admin-email", "admin@example.org")],
)
def test_valid_answers_have_no_reason(question: str, value: str) -> None:
    assert reason(question, value) == ""


@pytest.mark.parametrize(
    ("question", "value", "why"),
    [("database-host", "db example", "A host name or IP address is needed"),
     ("database-port", "0", "A port number is needed"),
     ("database-port", "65536", "A port number is needed"),
     ("database-port", "54x", "A port number is needed"),
     ("database-name", "x;drop", "Letters, digits, _ and -"),
     ("database-user", "1abc", "Letters, digits, _ and -"),
     ("server-name", "Not A Name", "A DNS name is needed"),
     ("mail-from", "Matrix <noreply>", "A sender is needed"),
     ("mail-from", "Matrix", "A sender is needed"),
     ("mail-relay-host", "smtp example.org", "The relay's host name or IP address is needed"),
     ("mail-relay-host", "", "The relay's host name or IP address is needed"),
     ("mail-relay-port", "70000", "A port number is needed"),
     ("mail-relay-port", "smtp", "A port number is needed"),
     ("mail-relay-user", "two words", "A login name has no blanks"),
     ("mail-relay-password", "", "A password is needed"),
     ("admin-email", "admin.example.org", "An e-mail address is needed")],
)
def test_invalid_answers_say_why(question: str, value: str, why: str) -> None:
    assert reason(question, value).startswith(why)

