"""Tests for passwords: Synapse's settings, its exact hash, and reading a new password."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from matrix_stack.base.errors import MatrixStackError, UsageError
from matrix_stack.synapse.passwords import (
    PasswordSettings,
    check_password,
    hash_password,
    password_settings,
    read_new_password,
)

FAST = PasswordSettings(rounds=4)
PEPPERED = PasswordSettings(rounds=4, pepper="pepper-ü")

# ---------------------------------------------------------------------------------------------
# Synapse's code, reproduced line for line. From Debian sid's matrix-synapse 1.160.0,
# /usr/lib/python3/dist-packages/synapse/handlers/auth.py, AuthHandler.hash (lines 1664-1697):
#
#     def _do_hash() -> str:
#         # Normalise the Unicode in the password
#         pw = unicodedata.normalize("NFKC", password)
#
#         bytes_to_hash = pw.encode(
#             "utf8"
#         ) + self.hs.config.auth.password_pepper.encode("utf8")
#         if len(bytes_to_hash) > 72:
#             # bcrypt only looks at the first 72 bytes.
#             ...
#             bytes_to_hash = bytes_to_hash[:72]
#
#         return bcrypt.hashpw(
#             bytes_to_hash,
#             bcrypt.gensalt(self.bcrypt_rounds),
#         ).decode("ascii")
#
# and AuthHandler.validate_hash (lines 1699-1737):
#
#     def _do_validate_hash(checked_hash: bytes) -> bool:
#         # Normalise the Unicode in the password
#         pw = unicodedata.normalize("NFKC", password)
#         password_pepper = self.hs.config.auth.password_pepper
#
#         bytes_to_hash = pw.encode("utf8") + password_pepper.encode("utf8")
#         if len(bytes_to_hash) > 72:
#             ...
#             bytes_to_hash = bytes_to_hash[:72]
#
#         return bcrypt.checkpw(
#             bytes_to_hash,
#             checked_hash,
#         )
#
#     if stored_hash:
#         if not isinstance(stored_hash, bytes):
#             stored_hash = stored_hash.encode("ascii")
#         return await defer_to_thread(self.hs.get_reactor(), _do_validate_hash, stored_hash)
#     else:
#         return False
#
# The password_pepper is password_config.pepper, default "" (synapse/config/auth.py); the
# bcrypt_rounds is bcrypt_rounds, default 12 (synapse/config/registration.py).
# ---------------------------------------------------------------------------------------------


def synapse_hash(password: str, pepper: str, rounds: int) -> str:
    """Synapse's AuthHandler.hash, as quoted above."""
    pw = unicodedata.normalize("NFKC", password)
    bytes_to_hash = pw.encode("utf8") + pepper.encode("utf8")
    if len(bytes_to_hash) > 72:
        bytes_to_hash = bytes_to_hash[:72]
    return bcrypt.hashpw(bytes_to_hash, bcrypt.gensalt(rounds)).decode("ascii")


def synapse_validate_hash(password: str, stored_hash: bytes | str | None, pepper: str) -> bool:
    """Synapse's AuthHandler.validate_hash, as quoted above."""
    if stored_hash:
        if not isinstance(stored_hash, bytes):
            stored_hash = stored_hash.encode("ascii")
        pw = unicodedata.normalize("NFKC", password)
        bytes_to_hash = pw.encode("utf8") + pepper.encode("utf8")
        if len(bytes_to_hash) > 72:
            bytes_to_hash = bytes_to_hash[:72]
        return bcrypt.checkpw(bytes_to_hash, stored_hash)
    return False


# Passwords covering each step: plain ASCII, one NFKC changes (U+FB01, the "fi" ligature),
# one over 72 bytes, one whose 72-byte cut splits a two-byte character.
PASSWORDS = (
    "correct horse battery staple",
    "s3cret-\ufb01",
    "é" * 40,
    "a" * 71 + "é",
)


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("settings", [FAST, PEPPERED], ids=["no-pepper", "pepper"])
def test_hash_password_is_accepted_by_synapse_validate_hash(
    password: str, settings: PasswordSettings
) -> None:
    stored = hash_password(password, settings)
    assert synapse_validate_hash(password, stored, settings.pepper)
    assert not synapse_validate_hash("wrong", stored, settings.pepper)


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("settings", [FAST, PEPPERED], ids=["no-pepper", "pepper"])
def test_check_password_accepts_synapse_hash(password: str, settings: PasswordSettings) -> None:
    stored = synapse_hash(password, settings.pepper, settings.rounds)
    assert check_password(password, stored, settings)
    assert not check_password("wrong", stored, settings)


def test_hash_password_with_rounds_4_starts_with_2b_04() -> None:
    stored = hash_password("correct horse battery staple", FAST)
    assert stored.startswith("$2b$04$")
    assert len(stored) == 60


def test_hash_password_uses_a_new_salt_each_time() -> None:
    assert hash_password("same", FAST) != hash_password("same", FAST)


def test_check_password_with_a_wrong_password_is_false() -> None:
    stored = hash_password("correct horse battery staple", FAST)
    assert not check_password("correct horse battery stapler", stored, FAST)


def test_check_password_with_nfkc_ligature_matches_the_plain_letters_both_ways() -> None:
    ligature, plain = "s3cret-\ufb01", "s3cret-fi"
    assert check_password(plain, hash_password(ligature, FAST), FAST)
    assert check_password(ligature, hash_password(plain, FAST), FAST)
    # Without NFKC, bcrypt alone tells them apart: the normalisation is what makes them equal.
    assert not bcrypt.checkpw(ligature.encode(), bcrypt.hashpw(plain.encode(), bcrypt.gensalt(4)))


def test_check_password_over_72_bytes_ignores_what_follows_byte_72() -> None:
    first, second = "p" * 72 + "-one", "p" * 72 + "-two"
    stored = hash_password(first, FAST)
    assert check_password(second, stored, FAST)
    assert synapse_validate_hash(second, stored, "")
    assert not check_password("p" * 71, stored, FAST)


def test_check_password_with_pepper_needs_the_same_pepper() -> None:
    stored = hash_password("correct horse battery staple", PEPPERED)
    assert check_password("correct horse battery staple", stored, PEPPERED)
    assert not check_password("correct horse battery staple", stored, FAST)
    assert not check_password("correct horse battery staple", stored, PasswordSettings(4, "x"))


def test_check_password_with_pepper_past_72_bytes_cuts_the_pepper() -> None:
    password = "p" * 70
    stored = hash_password(password, PasswordSettings(4, "ABCDEF"))
    assert check_password(password, stored, PasswordSettings(4, "ABxyz"))
    assert not check_password(password, stored, PasswordSettings(4, "AXCDEF"))


def test_check_password_with_bytes_hash_matches_like_str() -> None:
    stored = hash_password("pw", FAST)
    assert check_password("pw", stored.encode("ascii"), FAST)


@pytest.mark.parametrize("stored", [None, "", b""])
def test_check_password_with_no_hash_is_false(stored: str | bytes | None) -> None:
    assert not check_password("", stored, FAST)
    assert not check_password("pw", stored, FAST)


def test_check_password_with_a_non_bcrypt_hash_raises_one_line() -> None:
    with pytest.raises(MatrixStackError) as raised:
        check_password("pw", "not-a-hash", FAST)
    assert str(raised.value) == "the stored password hash is not a bcrypt hash"


def test_check_password_accepts_2a_and_2y_hashes_of_older_tools() -> None:
    stored = hash_password("pw", FAST)
    assert check_password("pw", "$2a$" + stored[4:], FAST)
    assert check_password("pw", "$2y$" + stored[4:], FAST)


# ---------------------------------------------------------------------------------------------
# Synapse's own code, run from the Debian sid root the booted-system tests use.
# ---------------------------------------------------------------------------------------------


def sid_root() -> Path | None:
    """Return an extracted Debian sid test root holding matrix-synapse, newest first."""
    roots = [
        root
        for root in Path("/var/cache/matrix-stack-tests").glob("sid-*.d")
        if (root / AUTH_PATH.lstrip("/")).is_file()
    ]
    return max(roots, key=lambda root: root.stat().st_mtime, default=None)


AUTH_PATH = "/usr/lib/python3/dist-packages/synapse/handlers/auth.py"
SID_ROOT = sid_root()
needs_synapse_source = pytest.mark.skipif(
    SID_ROOT is None, reason="no extracted Debian sid test root with matrix-synapse"
)

# Runs AuthHandler.hash and validate_hash from the auth.py named by argv[1], as they are:
# their text is compiled in a namespace giving them what they use (unicodedata, bcrypt,
# logger, defer_to_thread), since importing synapse.handlers needs Twisted and Python 3.14.
# Reads JSON cases on stdin, prints JSON results.
SYNAPSE_AUTH_RUNNER = r"""
import ast, asyncio, json, logging, sys, textwrap, types, unicodedata
import bcrypt

async def defer_to_thread(reactor, function, *args):
    return function(*args)

text = open(sys.argv[1], encoding="utf-8").read()
namespace = {"unicodedata": unicodedata, "bcrypt": bcrypt, "defer_to_thread": defer_to_thread,
             "logger": logging.getLogger("synapse.handlers.auth")}
found = []
for node in ast.parse(text).body:
    if isinstance(node, ast.ClassDef) and node.name == "AuthHandler":
        for item in node.body:
            if isinstance(item, ast.AsyncFunctionDef) and item.name in ("hash", "validate_hash"):
                exec(textwrap.dedent(ast.get_source_segment(text, item, padded=True)), namespace)
                found.append(item.name)
assert sorted(found) == ["hash", "validate_hash"], found

def handler(rounds, pepper):
    auth = types.SimpleNamespace(password_pepper=pepper)
    hs = types.SimpleNamespace(config=types.SimpleNamespace(auth=auth), get_reactor=lambda: None)
    return types.SimpleNamespace(hs=hs, bcrypt_rounds=rounds)

results = []
for case in json.loads(sys.stdin.buffer.read().decode("utf-8")):
    self = handler(case["rounds"], case["pepper"])
    results.append({
        "accepts_ours": asyncio.run(namespace["validate_hash"](self, case["check"], case["ours"])),
        "accepts_none": asyncio.run(namespace["validate_hash"](self, case["check"], "")),
        "synapse_hash": asyncio.run(namespace["hash"](self, case["password"])),
    })
try:
    bcrypt.hashpw(b"x" * 73, bcrypt.gensalt(4))
    uncut_raises = False
except ValueError:
    uncut_raises = True
print(json.dumps({"python": sys.version.split()[0], "bcrypt": bcrypt.__version__,
                  "uncut_73_bytes_raises": uncut_raises, "results": results}))
"""

# (password hashed, password checked, pepper): each check must succeed.
SYNAPSE_CASES = [
    (password, password, pepper) for password in PASSWORDS for pepper in ("", "pepper-ü")
] + [
    ("s3cret-\ufb01", "s3cret-fi", ""),
    ("s3cret-fi", "s3cret-\ufb01", ""),
    ("p" * 72 + "-one", "p" * 72 + "-two", ""),
]


def synapse_cases() -> list[dict[str, Any]]:
    """Return the JSON cases: our hash of each password, to be checked by Synapse's code."""
    return [
        {
            "password": hashed,
            "check": checked,
            "pepper": pepper,
            "rounds": 4,
            "ours": hash_password(hashed, PasswordSettings(4, pepper)),
        }
        for hashed, checked, pepper in SYNAPSE_CASES
    ]


def check_synapse_results(cases: list[dict[str, Any]], output: dict[str, Any]) -> None:
    """Assert Synapse accepted every hash of ours, and we accept every hash of Synapse's."""
    for case, result in zip(cases, output["results"], strict=True):
        assert result["accepts_ours"], case["password"]
        assert not result["accepts_none"]
        assert result["synapse_hash"].startswith("$2b$04$")
        settings = PasswordSettings(case["rounds"], case["pepper"])
        assert check_password(case["check"], result["synapse_hash"], settings), case["password"]


@needs_synapse_source
def test_synapse_own_hash_code_accepts_our_hashes_and_makes_hashes_we_accept() -> None:
    assert SID_ROOT is not None
    cases = synapse_cases()
    completed = subprocess.run(
        [sys.executable, "-B", "-c", SYNAPSE_AUTH_RUNNER, str(SID_ROOT / AUTH_PATH.lstrip("/"))],
        input=json.dumps(cases).encode(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    check_synapse_results(cases, json.loads(completed.stdout))


@pytest.fixture
def sid_python(tmp_path: Path) -> Iterator[Callable[[list[str], bytes], bytes]]:
    """Yield a runner of the sid root's python3, chrooted into a read-only bind mount of it.

    The sid root is the shared lower layer of the booted-system tests: it is mounted
    read-only in a private mount namespace, and Python runs with -B, so nothing is written.
    """
    if SID_ROOT is None:
        pytest.skip("no extracted Debian sid test root with matrix-synapse")
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("chroot"):
        pytest.skip("running the sid root's Python needs root, unshare and chroot")
    mountpoint = tmp_path / "sid"
    mountpoint.mkdir()
    script = 'mount --rbind "$1" "$2" && mount -o remount,bind,ro "$2" && shift && exec chroot "$@"'

    def run(argv: list[str], input_bytes: bytes) -> bytes:
        completed = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
            + [str(SID_ROOT), str(mountpoint), *argv],
            input=input_bytes,
            capture_output=True,
            timeout=120,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        if completed.returncode != 0 and b"Operation not permitted" in completed.stderr:
            pytest.skip("no mount namespace here: " + completed.stderr.decode(errors="replace"))
        assert completed.returncode == 0, completed.stderr.decode(errors="replace")
        return completed.stdout

    yield run


def test_synapse_own_hash_code_under_sid_python_and_bcrypt_5_agrees_with_ours(
    sid_python: Callable[[list[str], bytes], bytes],
) -> None:
    cases = synapse_cases()
    stdout = sid_python(
        ["/usr/bin/python3", "-B", "-I", "-c", SYNAPSE_AUTH_RUNNER, AUTH_PATH],
        json.dumps(cases).encode(),
    )
    output = json.loads(stdout)
    check_synapse_results(cases, output)
    # bcrypt 5 refuses more than 72 bytes instead of cutting: the cut is Synapse's, and ours.
    if int(output["bcrypt"].split(".")[0]) >= 5:
        assert output["uncut_73_bytes_raises"]


# ---------------------------------------------------------------------------------------------
# password_settings
# ---------------------------------------------------------------------------------------------


def test_password_settings_with_nothing_set_uses_synapse_defaults() -> None:
    assert password_settings({}) == PasswordSettings(rounds=12, pepper="")


def test_password_settings_reads_bcrypt_rounds_and_pepper() -> None:
    config = {"bcrypt_rounds": 10, "password_config": {"pepper": "s3cret-pepper"}}
    assert password_settings(config) == PasswordSettings(rounds=10, pepper="s3cret-pepper")


def test_password_settings_with_null_password_config_uses_defaults() -> None:
    assert password_settings({"password_config": None}) == PasswordSettings()


def test_password_settings_repr_leaves_out_the_pepper() -> None:
    settings = password_settings({"password_config": {"pepper": "s3cret-pepper"}})
    assert "s3cret-pepper" not in repr(settings)


@pytest.mark.parametrize("enabled", [False, "only_for_reauth", 0, None])
def test_password_settings_with_password_login_disabled_refuses(enabled: object) -> None:
    with pytest.raises(MatrixStackError) as raised:
        password_settings({"password_config": {"enabled": enabled}})
    assert str(raised.value) == (
        "password login is disabled in Synapse's configuration (password_config.enabled); "
        "a password set offline could not be used"
    )


def test_password_settings_with_password_login_enabled_explicitly_works() -> None:
    assert password_settings({"password_config": {"enabled": True}}) == PasswordSettings()


def test_password_settings_with_localdb_disabled_refuses() -> None:
    with pytest.raises(MatrixStackError, match="localdb_enabled is false"):
        password_settings({"password_config": {"localdb_enabled": False}})


def test_password_settings_with_authentication_service_refuses() -> None:
    with pytest.raises(MatrixStackError, match="Matrix Authentication Service"):
        password_settings({"matrix_authentication_service": {"enabled": True}})


@pytest.mark.parametrize("rounds", [3, 32, "12", True, 12.0])
def test_password_settings_with_bad_bcrypt_rounds_refuses(rounds: object) -> None:
    with pytest.raises(MatrixStackError) as raised:
        password_settings({"bcrypt_rounds": rounds})
    assert str(raised.value) == (
        f"bcrypt_rounds in Synapse's configuration is {rounds!r}; "
        "it must be a whole number from 4 to 31"
    )


@pytest.mark.parametrize("pepper", [None, 12345])
def test_password_settings_with_a_pepper_not_a_string_refuses(pepper: object) -> None:
    with pytest.raises(MatrixStackError, match="pepper .* is not a string"):
        password_settings({"password_config": {"pepper": pepper}})


# ---------------------------------------------------------------------------------------------
# read_new_password
# ---------------------------------------------------------------------------------------------

SECRET = "hunter2-s3cret"


class Prompt:
    """A getpass stand-in answering from a list and recording the prompts."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


def refused(password_file: str | None, **kwargs: Any) -> str:
    """Return the message read_new_password refuses with, checking it keeps the secret out."""
    with pytest.raises(UsageError) as raised:
        read_new_password(password_file, **kwargs)
    message = str(raised.value)
    assert SECRET not in message and SECRET not in repr(raised.value)
    assert "\n" not in message
    return message


def test_read_new_password_from_a_file_strips_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(f" {SECRET} \n", encoding="utf-8")
    assert read_new_password(str(path)) == f" {SECRET} "


def test_read_new_password_from_a_file_without_newline_reads_it_all(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret-\ufb01", encoding="utf-8")
    assert read_new_password(str(path)) == "s3cret-\ufb01"


def test_read_new_password_from_dash_reads_stdin() -> None:
    assert read_new_password("-", stdin=io.StringIO(f"{SECRET}\n")) == SECRET


def test_read_new_password_from_a_file_does_not_prompt(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET, encoding="utf-8")
    prompt = Prompt()
    read_new_password(str(path), prompt=prompt)
    assert prompt.prompts == []


def test_read_new_password_from_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    assert refused(str(path)) == (
        f"cannot read the password file {path}: No such file or directory"
    )


def test_read_new_password_from_a_directory_names_it(tmp_path: Path) -> None:
    assert refused(str(tmp_path)) == f"cannot read the password file {tmp_path}: Is a directory"


@pytest.mark.parametrize("text", ["", "\n"])
def test_read_new_password_from_an_empty_file_refuses(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pw"
    path.write_text(text, encoding="utf-8")
    assert refused(str(path)) == f"the password file {path} is empty"


def test_read_new_password_from_empty_stdin_refuses() -> None:
    assert refused("-", stdin=io.StringIO("")) == "standard input is empty"


@pytest.mark.parametrize("text", [f"{SECRET}\n\n", f"{SECRET}\nsecond\n", f"{SECRET}\rx"])
def test_read_new_password_from_a_file_of_several_lines_refuses(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pw"
    path.write_bytes(text.encode())
    assert refused(str(path)) == f"the password file {path} must hold the password on one line"


def test_read_new_password_from_a_file_with_crlf_drops_the_line_end(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(f"{SECRET}\r\n".encode())
    assert read_new_password(str(path)) == SECRET


def test_read_new_password_from_a_file_not_in_utf8_refuses(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(SECRET.encode() + b"\xe9\n")
    assert refused(str(path)) == f"the password file {path} is not UTF-8 text"


def test_read_new_password_of_512_characters_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("é" * 512, encoding="utf-8")
    assert read_new_password(str(path)) == "é" * 512


def test_read_new_password_over_512_characters_refuses(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET + "x" * 512, encoding="utf-8")
    assert refused(str(path)) == (
        f"the password file {path} is longer than 512 characters, Synapse's limit"
    )


def test_read_new_password_with_nul_refuses() -> None:
    message = refused("-", stdin=io.StringIO(f"{SECRET}\0x\n"))
    assert message == "standard input contains a NUL character, which Synapse refuses"


def test_read_new_password_prompts_twice_and_returns_the_password() -> None:
    prompt = Prompt(SECRET, SECRET)
    assert read_new_password(None, prompt=prompt) == SECRET
    assert prompt.prompts == ["New password: ", "Again: "]


def test_read_new_password_with_two_different_answers_refuses() -> None:
    assert refused(None, prompt=Prompt(SECRET, SECRET + "!")) == "the two passwords differ"


def test_read_new_password_with_empty_answers_refuses() -> None:
    assert refused(None, prompt=Prompt("", "")) == "the password is empty"


def test_read_new_password_with_closed_input_refuses() -> None:
    message = refused(None, prompt=Prompt())
    assert message == "no password typed; give one with --password-file"


def test_read_new_password_typed_over_512_characters_refuses() -> None:
    long = SECRET * 40
    message = refused(None, prompt=Prompt(long, long))
    assert message == "the password is longer than 512 characters, Synapse's limit"
