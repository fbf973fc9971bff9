"""Element releases: version order, safe unpacking, pinned key and gpgv, downloads, install,
upgrade, rollback and the postinst's best-effort fetch. Everything runs on loopback with a key
and releases made by the tests.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import host_path
from matrix_stack.base.paths import ELEMENT_ROOT
from matrix_stack.cli.element import status_lines
from matrix_stack.cli.main import main
from matrix_stack.core import stack as stack_file
from matrix_stack.core.host import locale_country_code
from matrix_stack.core.render import render_element_config
from matrix_stack.core.settings import Settings
from matrix_stack.features.element import install as element
from matrix_stack.features.element.archive import (
    ArchiveError,
    Release,
    highest_version,
    parse_version,
    unpack_release,
)
from matrix_stack.features.element.download import (
    DEFAULT_LATEST_URL,
    Deadline,
    Downloader,
    DownloadError,
    Progress,
    latest_url,
    resolve_latest,
    system_proxies,
    tarball_url,
    version_from,
)
from matrix_stack.features.element.install import postinst_lines
from matrix_stack.features.element.signature import (
    SignatureError,
    dearmor,
    key_blocks,
    packets,
    pinned_keyring,
    verify,
    write_keyring,
)
from tests.element_release import (
    Mirror,
    Route,
    TestKey,
    bad_release_members,
    entry,
    publish,
    release_members,
    serving,
    write_tarball,
)
from tests.unit.helpers import make_settings

PLACEHOLDER = "/usr/share/matrix-stack/element-placeholder"


# --- versions -----------------------------------------------------------------------------


def test_versions_compare_numerically_and_candidates_sort_before_their_release() -> None:
    assert parse_version("1.11.10") > parse_version("1.11.9")
    assert parse_version("1.11.90") > parse_version("1.11.90-rc.2") > parse_version("1.11.90-rc.1")
    assert parse_version("v1.11.90-rc.1") > parse_version("1.11.89")
    assert parse_version("2.0.0") > parse_version("1.99.99")


def test_highest_version_ignores_candidates_and_junk_unless_asked() -> None:
    found = ["v1.11.9", "1.11.10", "1.11.11-rc.1", "nightly", "1.11.2"]
    assert highest_version(found) == "1.11.10"
    assert highest_version(found, releases_only=False) == "1.11.11-rc.1"
    assert highest_version(["nightly"]) is None


# --- unpacking ----------------------------------------------------------------------------


def unpack(tmp_path: Path, members: list[Any], expected: str | None = None) -> Release:
    tarball = write_tarball(tmp_path / "release.tar.gz", members)
    destination = tmp_path / "unpacked"
    destination.mkdir()
    return unpack_release(tarball, destination, expected)


def test_good_release_unpacks_with_served_modes(tmp_path: Path) -> None:
    release = unpack(tmp_path, release_members("1.2.3"), "1.2.3")

    assert release.version == "1.2.3"
    assert release.path == tmp_path / "unpacked" / "element-v1.2.3"
    assert (release.path / "index.html").read_text().startswith("<!DOCTYPE html>")
    modes = {
        str(path.relative_to(release.path)): path.stat().st_mode & 0o7777
        for path in release.path.rglob("*")
    }
    assert modes == {"index.html": 0o644, "version": 0o644, "config.sample.json": 0o644,
                     "bundles": 0o755, "bundles/app.js": 0o644}
    assert release.path.stat().st_mode & 0o7777 == 0o755


BAD_ARCHIVE_LINES = {
    "dotdot": "member element-v1.2.3/../../escaped leads outside the release directory (..)",
    "absolute": "member /tmp/matrix-stack-absolute has an absolute path",
    "symlink": "symlink element-v1.2.3/etc -> ../../../../etc leads outside the release directory",
    "hardlink": "hard link element-v1.2.3/passwd -> /etc/passwd leads outside the release "
    "directory",
    "device": "member element-v1.2.3/null is a device, FIFO or other special file",
    "no-index": "element-v1.2.3/index.html is missing: not an Element web release",
}


@pytest.mark.parametrize("with_data_filter", [True, False], ids=["this-python", "no-filter"])
@pytest.mark.parametrize("case", sorted(BAD_ARCHIVE_LINES))
def test_unsafe_or_incomplete_release_is_refused_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, with_data_filter: bool
) -> None:
    if not with_data_filter:  # as on a Python without tarfile's "data" filter
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    with pytest.raises(ArchiveError) as refused:
        unpack(tmp_path, bad_release_members("1.2.3")[case])

    assert str(refused.value) == BAD_ARCHIVE_LINES[case]
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/matrix-stack-absolute").exists()


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ([entry("element-v1.2.3/x", kind=tarfile.SYMTYPE, link="."),
          entry("element-v1.2.3/x/l", kind=tarfile.SYMTYPE, link="..")],
         "member element-v1.2.3/x/l is written through the symlink element-v1.2.3/x"),
        ([entry("element-v1.2.3/x", kind=tarfile.SYMTYPE, link="."),
          entry("element-v1.2.3/l", kind=tarfile.SYMTYPE, link="x/..")],
         "symlink element-v1.2.3/l -> x/.. leads outside the release directory"),
        ([entry("element-v1.2.3/abs", kind=tarfile.SYMTYPE, link="/etc/passwd")],
         "symlink element-v1.2.3/abs -> /etc/passwd leads outside the release directory"),
        ([entry("element-v1.2.3/fifo", kind=tarfile.FIFOTYPE)],
         "member element-v1.2.3/fifo is a device, FIFO or other special file"),
        ([entry("element-v1.2.3/index.html", b"again")],
         "member element-v1.2.3/index.html appears twice"),
        ([entry("other/file", b"x")],
         "the tarball does not hold one element-vX.Y.Z/ directory, as Element releases do"),
    ],
)
def test_links_through_links_and_odd_layouts_are_refused(
    tmp_path: Path, extra: list[Any], line: str
) -> None:
    with pytest.raises(ArchiveError) as refused:
        unpack(tmp_path, release_members("1.2.3") + extra)
    assert str(refused.value) == line


def test_links_inside_the_release_are_kept(tmp_path: Path) -> None:
    release = unpack(tmp_path, release_members("1.2.3") + [
        entry("element-v1.2.3/bundles/latest", kind=tarfile.SYMTYPE, link="app.js"),
        entry("element-v1.2.3/copy.js", kind=tarfile.LNKTYPE, link="element-v1.2.3/bundles/app.js"),
    ])
    assert (release.path / "bundles/latest").read_text() == (release.path / "copy.js").read_text()


def test_release_whose_version_differs_from_the_request_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as refused:
        unpack(tmp_path, release_members("1.2.3"), "1.2.4")
    assert str(refused.value) == "the tarball holds Element 1.2.3, not the requested 1.2.4"


def test_version_file_must_match_the_directory_name(tmp_path: Path) -> None:
    members = [m for m in release_members("1.2.3") if not m[0].name.endswith("/version")]
    members.append(entry("element-v1.2.3/version", b"1.0.0\n"))
    with pytest.raises(ArchiveError) as refused:
        unpack(tmp_path, members)
    assert str(refused.value) == "element-v1.2.3/version says '1.0.0', not 1.2.3"


def test_file_that_is_no_tarball_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ArchiveError, match=r"^junk.tar.gz is not a readable tar.gz \("):
        unpack_release(tmp_path / "junk.tar.gz", tmp_path)


# --- keys and signatures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> Iterator[TestKey]:
    with TestKey.generate("Test Element Releases") as made:
        yield made


@pytest.fixture(scope="module")
def other_key() -> Iterator[TestKey]:
    with TestKey.generate("Someone Else") as made:
        yield made


def test_fingerprint_read_without_gpg_equals_gpgs(key: TestKey) -> None:
    assert list(key_blocks(key.public())) == [key.fingerprint]
    assert list(key_blocks(key.public(armor=False))) == [key.fingerprint]
    assert dearmor(key.public()) == key.public(armor=False)


def test_download_with_two_keys_keeps_only_the_pinned_one(key: TestKey, other_key: TestKey) -> None:
    both = other_key.public(armor=False) + key.public(armor=False)
    kept = pinned_keyring(both, key.fingerprint, "https://keys.example.test/k.asc")
    assert list(key_blocks(kept)) == [key.fingerprint]


def test_key_with_another_fingerprint_is_refused(key: TestKey, other_key: TestKey) -> None:
    with pytest.raises(SignatureError) as refused:
        pinned_keyring(other_key.public(), key.fingerprint, "https://keys.example.test/k.asc")
    assert str(refused.value) == (
        f"the key at https://keys.example.test/k.asc is not Element's release key: fingerprint "
        f"{other_key.fingerprint}, expected {key.fingerprint} (element_key_fingerprint in "
        "/etc/matrix-stack/stack.yaml)"
    )


@pytest.fixture
def signed(tmp_path: Path, key: TestKey) -> tuple[Path, Path, Path]:
    """A signed release tarball and a keyring holding only the pinned key."""
    tarball = publish(tmp_path, key, "1.2.3")
    keyring = tmp_path / "keyring.gpg"
    write_keyring(pinned_keyring(key.public(), key.fingerprint, "test"), keyring)
    return tarball, tarball.with_name(tarball.name + ".asc"), keyring


def test_good_signature_by_the_signing_subkey_verifies(
    signed: tuple[Path, Path, Path], key: TestKey
) -> None:
    tarball, signature, keyring = signed
    verify(tarball, signature, keyring, key.fingerprint)
    assert keyring.stat().st_mode & 0o777 == 0o644


def test_tampered_tarball_is_refused(signed: tuple[Path, Path, Path], key: TestKey) -> None:
    tarball, signature, keyring = signed
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tarball.write_bytes(bytes(data))
    with pytest.raises(SignatureError) as refused:
        verify(tarball, signature, keyring, key.fingerprint)
    assert str(refused.value) == (
        "the signature does not match element-v1.2.3.tar.gz: the download is corrupt or "
        "tampered with"
    )


def test_truncated_tarball_is_refused(signed: tuple[Path, Path, Path], key: TestKey) -> None:
    tarball, signature, keyring = signed
    tarball.write_bytes(tarball.read_bytes()[:-100])
    with pytest.raises(SignatureError, match="does not match element-v1.2.3.tar.gz"):
        verify(tarball, signature, keyring, key.fingerprint)


def test_signature_by_another_key_is_refused(
    signed: tuple[Path, Path, Path], key: TestKey, other_key: TestKey
) -> None:
    tarball, signature, keyring = signed
    other_key.sign(tarball, signature)
    with pytest.raises(SignatureError) as refused:
        verify(tarball, signature, keyring, key.fingerprint)
    assert str(refused.value) == (
        f"element-v1.2.3.tar.gz is signed by another key ({other_key.newest_subkey()}), not by "
        f"Element's key {key.fingerprint}"
    )


def test_signature_that_is_not_openpgp_is_refused(
    signed: tuple[Path, Path, Path], key: TestKey
) -> None:
    tarball, signature, keyring = signed
    signature.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(SignatureError, match="is not an OpenPGP signature"):
        verify(tarball, signature, keyring, key.fingerprint)


def test_foreign_key_grafted_on_as_a_subkey_is_not_trusted(
    signed: tuple[Path, Path, Path], key: TestKey, other_key: TestKey
) -> None:
    tarball, signature, keyring = signed
    # The attacker's signing subkey and its binding signature (made by the attacker's primary
    # key) appended to our key: gpgv must not take the subkey as ours.
    grafted = b""
    for tag, packet, _ in packets(other_key.public(armor=False)):
        if tag == 14 or grafted:
            grafted += packet
    assert grafted
    write_keyring(keyring.read_bytes() + grafted, keyring)
    other_key.sign(tarball, signature)
    with pytest.raises(SignatureError, match="signed by another key"):
        verify(tarball, signature, keyring, key.fingerprint)


# --- downloads ----------------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    directory = tmp_path / "mirror"
    directory.mkdir()
    with serving(directory) as served:
        yield served


def test_latest_from_github_redirect_json_listing_and_plain_text(mirror: Mirror) -> None:
    mirror.routes["/releases/latest"] = Route(302, headers={"Location": "/tag/v1.11.90"})
    mirror.routes["/tag/v1.11.90"] = Route(body=b"<html>release page</html>")
    mirror.routes["/api/latest"] = Route(body=b'{"tag_name": "v1.11.91"}')
    mirror.routes["/api/releases"] = Route(body=json.dumps([
        {"tag_name": "v1.11.9"}, {"tag_name": "v1.11.10"},
        {"tag_name": "v1.12.0-rc.1", "prerelease": True}, {"tag_name": "v2.0.0", "draft": True},
    ]).encode())
    mirror.routes["/version"] = Route(body=b"1.11.92\n")
    downloader = Downloader(proxies={})

    def latest(path: str) -> str:
        return resolve_latest(make_settings(element_latest_url=mirror.url + path[1:]), downloader)

    assert latest("/releases/latest") == "1.11.90"
    assert latest("/api/latest") == "1.11.91"
    assert latest("/api/releases") == "1.11.10"
    assert latest("/version") == "1.11.92"


def test_latest_from_a_mirror_directory_picks_the_highest_release(
    mirror: Mirror, tmp_path: Path
) -> None:
    for name in ("element-v1.11.9.tar.gz", "element-v1.11.10.tar.gz",
                 "element-v1.11.10.tar.gz.asc", "element-v1.12.0-rc.1.tar.gz", "index.txt"):
        (mirror.directory / name).write_bytes(b"")
    over_http = make_settings(element_source=mirror.url + "element-v{version}.tar.gz")
    in_directory = make_settings(element_source=f"file://{mirror.directory}/")
    downloader = Downloader(proxies={})

    assert latest_url(over_http) == mirror.url
    assert resolve_latest(over_http, downloader) == "1.11.10"
    assert resolve_latest(in_directory, downloader) == "1.11.10"


def test_latest_url_defaults_to_github_and_refuses_versioned_mirror_directories() -> None:
    assert latest_url(make_settings()) == DEFAULT_LATEST_URL
    versioned = make_settings(element_source="https://m.example.org/v{version}/e-{version}.tgz")
    with pytest.raises(DownloadError, match="set element_latest_url"):
        latest_url(versioned)
    assert version_from(b"<html>nothing</html>", "https://example.org/") is None


def test_tarball_url_fills_the_template_or_a_directory() -> None:
    assert tarball_url("https://m.example.org/v{version}/e.tgz", "1.2.3") == (
        "https://m.example.org/v1.2.3/e.tgz")
    assert tarball_url("file:///srv/element/", "1.2.3") == (
        "file:///srv/element/element-v1.2.3.tar.gz")
    with pytest.raises(DownloadError, match="has no {version} and is no directory"):
        tarball_url("https://m.example.org/element.tgz", "1.2.3")


def test_cut_short_download_is_refused(mirror: Mirror, tmp_path: Path) -> None:
    (mirror.directory / "big.tar.gz").write_bytes(os.urandom(300_000))
    mirror.truncate("/big.tar.gz")
    with pytest.raises(DownloadError) as refused:
        Downloader(proxies={}).download(mirror.url + "big.tar.gz", tmp_path / "big")
    assert str(refused.value) == "the download of big.tar.gz was cut short (150000 of 300000 bytes)"


def test_http_error_and_unreachable_host_are_one_line(mirror: Mirror, tmp_path: Path) -> None:
    downloader = Downloader(proxies={})
    with pytest.raises(DownloadError, match=r"^http://127.0.0.1:\d+/missing answered HTTP 404"):
        downloader.download(mirror.url + "missing", tmp_path / "x")
    with pytest.raises(DownloadError, match=r"^cannot reach 127.0.0.1: .*[Cc]onnection refused"):
        downloader.read("http://127.0.0.1:9/")


def test_missing_file_of_a_file_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as refused:
        Downloader(proxies={}).read(f"file://{tmp_path}/element-v1.2.3.tar.gz")
    assert str(refused.value) == (
        f"cannot read {tmp_path}/element-v1.2.3.tar.gz: No such file or directory")


def test_server_that_does_not_answer_hits_the_deadline(mirror: Mirror) -> None:
    def slow() -> Route:
        time.sleep(3)
        return Route(body=b"1.2.3")

    mirror.routes["/slow"] = slow
    started = time.monotonic()
    with pytest.raises(DownloadError, match="did not answer in time"):
        Downloader(Deadline(0.5), proxies={}).read(mirror.url + "slow")
    assert time.monotonic() - started < 2
    with pytest.raises(DownloadError, match=r"^timed out after 0 s"):
        Deadline(0.0).timeout()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_redrawn_on_a_terminal_and_one_line_otherwise(mirror: Mirror,
                                                                  tmp_path: Path) -> None:
    (mirror.directory / "element-v1.2.3.tar.gz").write_bytes(b"x" * 3_100_000)
    for stream in (Terminal(), io.StringIO()):
        downloader = Downloader(proxies={}, progress=Progress(stream))
        downloader.download(mirror.url + "element-v1.2.3.tar.gz", tmp_path / "t")
        shown = stream.getvalue()
        assert shown.endswith("downloaded element-v1.2.3.tar.gz: 3.1 MB\n")
        if isinstance(stream, Terminal):
            assert "\r\033[Kdownloading element-v1.2.3.tar.gz: 0.1 of 3.1 MB" in shown
        else:
            assert shown == "downloaded element-v1.2.3.tar.gz: 3.1 MB\n"


def test_proxy_from_the_environment_wins_over_apts() -> None:
    def apt() -> dict[str, str]:
        return {"http": "http://apt-proxy:3142/", "https": "http://apt-proxy:3142/"}

    assert system_proxies({"https_proxy": "http://env:8080/"}, apt) == {"https": "http://env:8080/"}
    assert system_proxies({}, apt) == apt()


def test_apts_http_proxy_serves_https_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matrix_stack.features.element.download import apt_proxies

    config = tmp_path / "apt.conf"
    (tmp_path / "parts").mkdir()
    isolated = f'Dir::Etc::Parts "{tmp_path}/parts"; Dir::Etc::Main "/dev/null";\n'
    config.write_text(isolated + 'Acquire::http::Proxy "http://proxy.example.org:3128/";\n')
    monkeypatch.setenv("APT_CONFIG", str(config))
    assert apt_proxies() == {"http": "http://proxy.example.org:3128/",
                             "https": "http://proxy.example.org:3128/"}
    config.write_text(isolated + 'Acquire::http::Proxy "DIRECT";\n')
    assert apt_proxies() == {}


# --- install, upgrade, rollback -----------------------------------------------------------


class Site:
    """A fake root with the placeholder served, and a loopback mirror with the test key."""

    def __init__(self, root: Path, mirror: Mirror, key: TestKey) -> None:
        self.root, self.mirror, self.key = root, mirror, key
        host_path(ELEMENT_ROOT, root).parent.mkdir(parents=True)
        host_path(ELEMENT_ROOT, root).symlink_to(PLACEHOLDER)
        (mirror.directory / "key.asc").write_bytes(key.public())

    def settings(self, **overrides: Any) -> Settings:
        return make_settings(self.root, **{
            "element_source": self.mirror.url + "element-v{version}.tar.gz",
            "element_key_url": self.mirror.url + "key.asc",
            "element_key_fingerprint": self.key.fingerprint,
            **overrides,
        })

    def publish(self, version: str, members: list[Any] | None = None) -> Path:
        return publish(self.mirror.directory, self.key, version, members)

    def fetch(
        self, version: str | None = None, *, allow_downgrade: bool = False, **overrides: Any
    ) -> element.Outcome:
        downloader = Downloader(proxies={})
        return element.fetch(self.settings(**overrides), version, root=self.root,
                             downloader=downloader, allow_downgrade=allow_downgrade)

    def current(self) -> str:
        return os.readlink(host_path(ELEMENT_ROOT, self.root))

    def entries(self) -> list[str]:
        return sorted(p.name for p in host_path(ELEMENT_ROOT, self.root).parent.iterdir())


@pytest.fixture
def site(tmp_path: Path, mirror: Mirror, key: TestKey) -> Site:
    return Site(tmp_path / "root", mirror, key)


def test_fetch_installs_a_signed_release_and_keeps_only_the_pinned_key(site: Site) -> None:
    site.publish("1.2.3")
    outcome = site.fetch("1.2.3")

    assert outcome == element.Outcome("1.2.3", None, changed=True)
    assert site.current() == "element-v1.2.3"
    assert site.entries() == [".lock", "current", "element-v1.2.3", "keyring.gpg"]
    keyring = host_path(element.KEYRING_PATH, site.root).read_bytes()
    assert list(key_blocks(keyring)) == [site.key.fingerprint]
    served = host_path(ELEMENT_ROOT, site.root)
    assert (served / "version").read_text() == "1.2.3\n"
    assert element.installed(site.root) == element.Installed("1.2.3", None)


def test_fetch_shows_progress_for_the_tarball_only(site: Site) -> None:
    site.publish("1.2.3")
    shown = io.StringIO()
    downloader = Downloader(proxies={}, progress=Progress(shown))
    element.fetch(site.settings(), "1.2.3", root=site.root, downloader=downloader)
    assert shown.getvalue() == "downloaded element-v1.2.3.tar.gz: 0.0 MB\n"


def test_fetch_of_the_served_version_downloads_nothing(site: Site) -> None:
    site.publish("1.2.3")
    site.fetch("1.2.3")
    site.mirror.requests.clear()

    assert site.fetch("1.2.3") == element.Outcome("1.2.3", "1.2.3", changed=False)
    assert site.mirror.requests == []


def sign_other_data(site: Site, tarball: Path) -> None:
    other = tarball.with_name("other-data")
    other.write_bytes(b"something else")
    site.key.sign(other, tarball.with_name(tarball.name + ".asc"))


def tamper(site: Site, tarball: Path) -> None:
    write_tarball(tarball, release_members("1.2.4") + [entry("element-v1.2.4/evil.js", b"x")])


def other_key_signs(site: Site, tarball: Path, other: TestKey) -> None:
    other.sign(tarball)


REFUSED_RELEASES = {
    "wrong-signature": "the signature does not match element-v1.2.4.tar.gz: the download is "
    "corrupt or tampered with",
    "tampered": "the signature does not match element-v1.2.4.tar.gz: the download is corrupt "
    "or tampered with",
    "truncated": "the download of element-v1.2.4.tar.gz was cut short",
    "other-key": "element-v1.2.4.tar.gz is signed by another key",
    **{case: line.replace("1.2.3", "1.2.4") for case, line in BAD_ARCHIVE_LINES.items()},
}


@pytest.mark.parametrize("case", sorted(REFUSED_RELEASES))
def test_bad_release_is_refused_and_the_served_one_stays(
    site: Site, other_key: TestKey, case: str
) -> None:
    site.publish("1.2.3")
    site.fetch("1.2.3")
    before = site.entries()
    members = bad_release_members("1.2.4").get(case)
    tarball = site.publish("1.2.4", members)
    if case == "wrong-signature":
        sign_other_data(site, tarball)
    elif case == "tampered":
        tamper(site, tarball)
    elif case == "truncated":
        site.mirror.truncate(f"/{tarball.name}")
    elif case == "other-key":
        other_key_signs(site, tarball, other_key)

    with pytest.raises(MatrixStackError) as refused:
        site.fetch("1.2.4")

    assert str(refused.value).startswith(REFUSED_RELEASES[case])
    assert "\n" not in str(refused.value)
    assert site.current() == "element-v1.2.3"
    assert site.entries() == before


def test_upgrades_keep_one_previous_release_and_rollback_toggles(site: Site) -> None:
    for version in ("1.2.3", "1.2.4", "1.2.5"):
        site.publish(version)
    site.fetch("1.2.3")
    assert site.fetch("1.2.4") == element.Outcome("1.2.4", "1.2.3")
    assert site.fetch("1.2.5") == element.Outcome("1.2.5", "1.2.4")
    assert site.entries() == [".lock", "current", "element-v1.2.4", "element-v1.2.5",
                              "keyring.gpg", "previous"]

    assert element.rollback(site.root) == ("1.2.4", "1.2.5")
    assert element.installed(site.root) == element.Installed("1.2.4", "1.2.5")
    assert element.rollback(site.root) == ("1.2.5", "1.2.4")
    assert site.current() == "element-v1.2.5"


def test_reinstalling_the_kept_previous_version_replaces_it(site: Site) -> None:
    for version in ("1.2.3", "1.2.4"):
        site.publish(version)
        site.fetch(version)
    assert site.fetch("1.2.3", allow_downgrade=True) == element.Outcome("1.2.3", "1.2.4")
    assert element.installed(site.root) == element.Installed("1.2.3", "1.2.4")
    assert site.entries() == [".lock", "current", "element-v1.2.3", "element-v1.2.4",
                              "keyring.gpg", "previous"]


def test_latest_older_than_the_served_release_is_refused_before_any_download(
    site: Site,
) -> None:
    # A stale mirror or a tampered http:// source names an old, validly signed release.
    for version in ("1.11.9", "1.11.10"):
        site.publish(version)
    site.fetch("1.11.10")
    for name in ("element-v1.11.10.tar.gz", "element-v1.11.10.tar.gz.asc"):
        (site.mirror.directory / name).unlink()
    site.mirror.requests.clear()
    before = site.entries()

    with pytest.raises(MatrixStackError) as refused:
        site.fetch("latest")

    assert str(refused.value) == (
        "Element 1.11.9 is older than the installed 1.11.10: refused (a stale mirror or a "
        "tampered download can offer an old release); add --allow-downgrade to install it anyway"
    )
    assert [path for path in site.mirror.requests if ".tar.gz" in path] == []
    assert site.current() == "element-v1.11.10"
    assert site.entries() == before


def test_an_older_version_is_installed_with_allow_downgrade(site: Site) -> None:
    for version in ("1.11.9", "1.11.10"):
        site.publish(version)
    site.fetch("1.11.10")

    assert site.fetch("1.11.9", allow_downgrade=True) == element.Outcome(
        "1.11.9", "1.11.10"
    )
    assert site.current() == "element-v1.11.9"


@pytest.mark.parametrize(
    ("served", "offered", "refused"),
    [("1.11.10", "1.11.9", True), ("1.11.90", "1.11.9", True), ("1.11.9", "1.11.10", False),
     ("2.0.0", "1.99.99", True), ("1.2.3", "1.2.3-rc.1", True), ("1.2.3-rc.1", "1.2.3", False),
     ("1.2.3", "v1.2.4", False)],
)
def test_downgrades_are_found_by_version_order_not_text(
    served: str, offered: str, refused: bool
) -> None:
    if refused:
        with pytest.raises(MatrixStackError, match=f"^Element {offered} is older than the "
                           f"installed {served}: refused"):
            element.refuse_downgrade(offered, served, allow_downgrade=False)
    else:
        element.refuse_downgrade(offered, served, allow_downgrade=False)
    element.refuse_downgrade(offered, served, allow_downgrade=True)
    element.refuse_downgrade(offered, None, allow_downgrade=False)


def test_install_of_an_older_local_tarball_is_refused_unless_allowed(
    site: Site, tmp_path: Path
) -> None:
    site.publish("1.3.0")
    site.fetch("1.3.0")
    tarball = publish(tmp_path / "local", site.key, "1.2.9")
    signature = tarball.with_name(tarball.name + ".asc")
    before = site.entries()

    with pytest.raises(MatrixStackError) as refused:
        element.install(site.settings(), tarball, signature, root=site.root,
                        downloader=Downloader(proxies={}))

    assert str(refused.value) == (
        "Element 1.2.9 is older than the installed 1.3.0: refused (a stale mirror or a "
        "tampered download can offer an old release); add --allow-downgrade to install it anyway"
    )
    assert site.entries() == before
    outcome = element.install(site.settings(), tarball, signature, root=site.root,
                              downloader=Downloader(proxies={}), allow_downgrade=True)
    assert outcome == element.Outcome("1.2.9", "1.3.0")


def test_command_line_passes_allow_downgrade_to_fetch_and_install(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, bool]] = []

    def fetch(settings: Settings, requested: str | None, **options: Any) -> element.Outcome:
        calls.append(("fetch", options["allow_downgrade"]))
        return element.Outcome("1.2.3", "1.2.4")

    def install(settings: Settings, tarball: Path, signature: Path,
                **options: Any) -> element.Outcome:
        calls.append(("install", options["allow_downgrade"]))
        return element.Outcome("1.2.3", "1.2.4")

    monkeypatch.setattr(element, "fetch", fetch)
    monkeypatch.setattr(element, "install", install)
    monkeypatch.setattr("matrix_stack.base.errors.ensure_root", lambda: None)
    monkeypatch.setattr("matrix_stack.cli.element._settings", site.settings)
    tarball = tmp_path / "element-v1.2.3.tar.gz"
    for path in (tarball, tmp_path / "element-v1.2.3.tar.gz.asc"):
        path.write_bytes(b"")

    for argv in (["element", "fetch", "1.2.3", "--allow-downgrade"], ["element", "fetch"],
                 ["element", "install", str(tarball), "--allow-downgrade"],
                 ["element", "install", str(tarball)]):
        assert main(argv) == 0

    assert calls == [("fetch", True), ("fetch", False), ("install", True), ("install", False)]
    assert capsys.readouterr().out == (
        "installed Element 1.2.3 (signature verified); 1.2.4 kept for: matrix-stack-admin "
        "element rollback\n" * 4
    )


def test_leftovers_of_an_interrupted_run_are_pruned_by_the_next_install(site: Site) -> None:
    directory = host_path(ELEMENT_ROOT, site.root).parent
    for name in (".unpack-dead", ".download-dead", "element-v0.9.0"):
        (directory / name / "inner").mkdir(parents=True)
    site.publish("1.2.3")
    site.fetch("1.2.3")
    assert site.entries() == [".lock", "current", "element-v1.2.3", "keyring.gpg"]


def test_rollback_without_a_previous_release_is_refused(site: Site) -> None:
    with pytest.raises(MatrixStackError) as refused:
        element.rollback(site.root)
    assert str(refused.value) == "there is no previous Element release to roll back to"
    assert site.current() == PLACEHOLDER


def test_fetch_latest_installs_the_highest_release_of_the_mirror(site: Site) -> None:
    for version in ("1.11.9", "1.11.10", "1.11.8"):
        site.publish(version)
    assert site.fetch("latest").version == "1.11.10"
    assert site.fetch().version == "1.11.10"  # element_version defaults to latest


def test_air_gapped_directory_source_installs_the_highest_release(site: Site) -> None:
    for version in ("1.2.3", "1.2.10"):
        site.publish(version)
    local = f"file://{site.mirror.directory}/"
    outcome = site.fetch(element_source=local, element_key_url=local + "key.asc")
    assert outcome == element.Outcome("1.2.10", None)
    assert site.mirror.requests == []


def test_key_with_another_fingerprint_at_the_key_url_leaves_the_placeholder(
    site: Site, other_key: TestKey
) -> None:
    site.publish("1.2.3")
    (site.mirror.directory / "key.asc").write_bytes(other_key.public())
    with pytest.raises(SignatureError, match="is not Element's release key: fingerprint "):
        site.fetch("1.2.3")
    assert site.current() == PLACEHOLDER
    assert not host_path(element.KEYRING_PATH, site.root).exists()


def test_kept_key_is_refreshed_once_when_a_new_signing_subkey_signs(tmp_path: Path,
                                                                    mirror: Mirror) -> None:
    rotating = TestKey.generate("Rotating Releases")
    try:
        site = Site(tmp_path / "root", mirror, rotating)
        site.publish("1.2.3")
        site.fetch("1.2.3")
        rotating.add_signing_subkey()
        (mirror.directory / "key.asc").write_bytes(rotating.public())
        site.publish("1.2.4")
        assert site.fetch("1.2.4") == element.Outcome("1.2.4", "1.2.3")
    finally:
        rotating.close()


def test_install_of_a_local_tarball_reads_its_version(site: Site, tmp_path: Path) -> None:
    tarball = publish(tmp_path / "local", site.key, "1.3.0", name="download.tgz")
    outcome = element.install(site.settings(), tarball, tarball.with_name("download.tgz.asc"),
                              root=site.root, downloader=Downloader(proxies={}))
    assert outcome == element.Outcome("1.3.0", None)
    assert site.current() == "element-v1.3.0"


# --- the postinst, status and the command line --------------------------------------------


def write_stack(site: Site, **values: str) -> None:
    settings = site.settings()
    stack_file.write_stack({
        "server_name": settings.server_name,
        "turn_listening_ip": settings.turn_listening_ip,
        "turn_external_ip": settings.turn_external_ip,
        "element_source": settings.element_source,
        "element_key_url": settings.element_key_url,
        "element_key_fingerprint": settings.element_key_fingerprint,
        **values,
    }, site.root)


def test_postinst_offline_warns_in_one_line_and_keeps_the_placeholder(site: Site) -> None:
    write_stack(site, element_source="http://127.0.0.1:9/element-v{version}.tar.gz",
                element_version="1.2.3")
    assert postinst_lines(site.root) == [
        "Element not installed (cannot reach 127.0.0.1: Connection refused); retry with: "
        "matrix-stack-admin element fetch"
    ]
    assert site.current() == PLACEHOLDER


def test_postinst_installs_latest_only_when_nothing_is_installed(site: Site) -> None:
    site.publish("1.2.3")
    write_stack(site)
    assert postinst_lines(site.root) == ["installed Element 1.2.3 (signature verified)"]
    site.publish("1.2.4")
    site.mirror.requests.clear()
    assert postinst_lines(site.root) == []
    assert site.mirror.requests == []


def test_postinst_installs_a_pinned_version_that_is_not_served(site: Site) -> None:
    for version in ("1.2.3", "1.2.4"):
        site.publish(version)
    write_stack(site, element_version="1.2.3")
    postinst_lines(site.root)
    write_stack(site, element_version="1.2.4")
    assert postinst_lines(site.root) == [
        "installed Element 1.2.4 (signature verified); 1.2.3 kept for: matrix-stack-admin "
        "element rollback"
    ]


def test_status_shows_served_previous_configured_and_key(site: Site) -> None:
    settings = site.settings()
    assert status_lines(settings, site.root) == [
        "installed: none (a page saying how to install Element is served); run: "
        "matrix-stack-admin element fetch",
        "previous:  none",
        f"configured: latest from {settings.element_source}",
        f"latest is looked up at: {site.mirror.url}",
        f"signing key: {site.key.fingerprint} from {settings.element_key_url}",
    ]
    site.publish("1.2.3")
    site.fetch("1.2.3")
    assert status_lines(settings, site.root)[:2] == ["installed: Element 1.2.3", "previous:  none"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["element", "fetch", "1.2"], "VERSION: '1.2' must be 'latest' or a version such as "
         "1.11.90"),
        (["element", "install", "/nonexistent/e.tar.gz"], "/nonexistent/e.tar.gz: no such file"),
    ],
)
def test_command_line_usage_errors_exit_2_with_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == f"matrix-stack-admin: {line}\n"


# --- config.json --------------------------------------------------------------------------


def test_element_config_has_brand_theme_and_the_locales_country() -> None:
    config = json.loads(render_element_config(make_settings(), "DE"))
    assert (config["brand"], config["default_theme"], config["default_country_code"]) == (
        "Element", "light", "DE")
    assert "default_country_code" not in json.loads(render_element_config(make_settings()))


@pytest.mark.parametrize(
    ("text", "country"),
    [('LANG="en_GB.UTF-8"\n', "GB"), ("LANG=de_AT.UTF-8\nLC_ALL=fr_CA.UTF-8\n", "CA"),
     ("LANG=C.UTF-8\n", ""), ("#  File generated by update-locale\n", ""), (None, "")],
)
def test_country_code_comes_from_the_system_locale(
    tmp_path: Path, text: str | None, country: str
) -> None:
    if text is not None:
        (tmp_path / "etc/default").mkdir(parents=True)
        (tmp_path / "etc/default/locale").write_text(text)
    assert locale_country_code(tmp_path) == country
