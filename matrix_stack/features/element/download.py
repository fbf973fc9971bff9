"""Downloads for Element (release, signature, key, latest version): stdlib HTTP, system proxy.

The proxy is the environment's (http_proxy, https_proxy, no_proxy) when one is set, else
apt's Acquire::http::Proxy / Acquire::https::Proxy, as apt itself would use. Every
connection has a timeout, and a Deadline bounds a whole fetch (the postinst gives 60 s).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from matrix_stack import __version__
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.run import run
from matrix_stack.core.settings import DEFAULT_ELEMENT_SOURCE, Settings
from matrix_stack.features.element.archive import highest_version, is_version

DEFAULT_LATEST_URL = "https://github.com/element-hq/element-web/releases/latest"
CONNECT_TIMEOUT = 30.0
SMALL_LIMIT = 1 << 20
TARBALL_LIMIT = 512 << 20
_CHUNK = 1 << 16
_RELEASE_NAME = re.compile(r"element-(v\d+\.\d+\.\d+(?:-rc\.?\d+)?)\.tar\.gz(?![\w.])")


class DownloadError(MatrixStackError):
    """A download failed or timed out."""


@dataclass
class Deadline:
    """A time limit for a whole fetch; None seconds means only per-connection timeouts."""

    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)

    def timeout(self) -> float:
        """Return the timeout for the next network operation, or raise once time is up."""
        if self.seconds is None:
            return CONNECT_TIMEOUT
        remaining = self.seconds - (time.monotonic() - self.started)
        if remaining <= 0:
            raise DownloadError(f"timed out after {self.seconds:.0f} s")
        return min(CONNECT_TIMEOUT, remaining)


def apt_proxies() -> dict[str, str]:
    """Return apt's configured HTTP and HTTPS proxies (HTTPS falls back to HTTP, as in apt)."""
    result = run(
        ["apt-config", "shell", "HTTP", "Acquire::http::Proxy", "HTTPS", "Acquire::https::Proxy"],
        check=False,
        timeout=30,
    )
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        words = shlex.split(value) if value else []
        if words and words[0] not in ("DIRECT", "false"):
            found[name.lower()] = words[0]
    if "http" in found:
        found.setdefault("https", found["http"])
    return found


def system_proxies(
    environ: Mapping[str, str] = os.environ, apt: Callable[[], dict[str, str]] = apt_proxies
) -> dict[str, str]:
    """Return the proxy of each scheme: the environment's if it names one, else apt's."""
    from_environment = {}
    for scheme in ("http", "https"):
        value = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY")
        if value:
            from_environment[scheme] = value
    return from_environment or apt()


def _megabytes(count: int) -> str:
    return f"{count / 1_000_000:.1f}"


class Progress:
    """Show a download's progress on one line of a terminal, or one final line otherwise."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty()
        self._shown = 0.0

    def update(self, name: str, done: int, total: int | None, *, final: bool = False) -> None:
        """Report done bytes of total; a terminal line is redrawn at most 5 times a second."""
        size = f"{_megabytes(done)} MB"
        if total:
            size = f"{_megabytes(done)} of {_megabytes(total)} MB"
        if final:
            end = "\r\033[K" if self.terminal else ""
            self.stream.write(f"{end}downloaded {name}: {_megabytes(done)} MB\n")
        elif self.terminal and time.monotonic() - self._shown >= 0.2:
            self._shown = time.monotonic()
            self.stream.write(f"\r\033[Kdownloading {name}: {size}")
        self.stream.flush()


class Downloader:
    """Fetch URLs (https, http, file) through the system's proxy, within a deadline."""

    def __init__(
        self,
        deadline: Deadline | None = None,
        proxies: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.deadline = deadline or Deadline()
        handler = urllib.request.ProxyHandler(system_proxies() if proxies is None else proxies)
        self.opener = urllib.request.build_opener(handler)
        self.progress = progress

    def _open(self, url: str) -> Any:
        request = urllib.request.Request(url, headers={"User-Agent": f"matrix-stack/{__version__}"})
        where = urllib.parse.urlsplit(url).hostname or url
        try:
            return self.opener.open(request, timeout=self.deadline.timeout())
        except urllib.error.HTTPError as error:
            error.close()
            raise DownloadError(f"{url} answered HTTP {error.code} {error.reason}") from None
        except urllib.error.URLError as error:
            reason = error.reason
            text = getattr(reason, "strerror", None) or str(reason)
            if url.startswith("file:"):
                path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
                raise DownloadError(f"cannot read {path}: {text}") from None
            raise DownloadError(f"cannot reach {where}: {text}") from None
        except TimeoutError:
            raise DownloadError(f"{where} did not answer in time") from None
        except (OSError, http.client.HTTPException) as error:
            raise DownloadError(f"cannot download {url}: {error}") from None

    def _copy(self, url: str, response: Any, sink: IO[bytes], limit: int, show: bool) -> int:
        name = url.rstrip("/").rsplit("/", 1)[-1]
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > limit:
            raise DownloadError(f"{name} is larger than {_megabytes(limit)} MB; refused")
        done = 0
        try:
            while chunk := response.read(_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise DownloadError(f"{name} is larger than {_megabytes(limit)} MB; refused")
                sink.write(chunk)
                self.deadline.timeout()
                if show and self.progress is not None:
                    self.progress.update(name, done, total)
        except http.client.IncompleteRead as error:
            done += len(error.partial)
            raise DownloadError(
                f"the download of {name} was cut short ({done} of {total} bytes)"
            ) from None
        except TimeoutError:
            raise DownloadError(f"the download of {name} stalled; try again") from None
        except (OSError, http.client.HTTPException) as error:
            raise DownloadError(f"the download of {name} failed: {error}") from None
        if total is not None and done != total:
            raise DownloadError(f"the download of {name} was cut short ({done} of {total} bytes)")
        if show and self.progress is not None:
            self.progress.update(name, done, total, final=True)
        return done

    def download(
        self, url: str, target: Path, *, limit: int = TARBALL_LIMIT, show: bool = True
    ) -> int:
        """Save url to target (showing progress unless told); return the number of bytes."""
        with self._open(url) as response, open(target, "wb") as sink:
            return self._copy(url, response, sink, limit, show=show)

    def read(self, url: str, *, limit: int = SMALL_LIMIT) -> tuple[bytes, str]:
        """Return the body of a small document and the URL it was finally read from."""
        with self._open(url) as response:
            sink = io.BytesIO()
            self._copy(url, response, sink, limit, show=False)
            return sink.getvalue(), str(response.geturl())


def tarball_url(source: str, version: str) -> str:
    """Return the release tarball URL: source with {version} filled in, or in a directory."""
    if "{version}" in source:
        return source.replace("{version}", version)
    if source.endswith("/"):
        return f"{source}element-v{version}.tar.gz"
    raise DownloadError(
        f"element_source {source} has no {{version}} and is no directory (ending in /); fix it "
        "in /etc/matrix-stack/stack.yaml"
    )


def latest_url(settings: Settings) -> str:
    """Return where to look the latest version up: set, GitHub's, or the source's directory."""
    if settings.element_latest_url:
        return settings.element_latest_url
    if settings.element_source == DEFAULT_ELEMENT_SOURCE:
        return DEFAULT_LATEST_URL
    directory, _, name = settings.element_source.rpartition("/")
    if "{version}" in directory:
        raise DownloadError(
            "cannot find the latest version in a mirror whose directories are versions: set "
            "element_latest_url in /etc/matrix-stack/stack.yaml, or give a version"
        )
    return directory + "/"


def version_from(body: bytes, final_url: str) -> str | None:
    """Return the version a latest-release answer names: redirect, JSON, listing or text."""
    tag = re.search(r"/tag/(v?\d+\.\d+\.\d+(?:-rc\.?\d+)?)/?$", final_url)
    if tag:
        return tag.group(1).removeprefix("v")
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("tag_name"), str):
        return highest_version([document["tag_name"]], releases_only=False)
    if isinstance(document, list):
        tags = [
            str(entry.get("tag_name", ""))
            for entry in document
            if isinstance(entry, dict) and not entry.get("draft") and not entry.get("prerelease")
        ]
        return highest_version(tags)
    if is_version(text):
        return text.strip().removeprefix("v")
    return highest_version(_RELEASE_NAME.findall(text))


def resolve_latest(settings: Settings, downloader: Downloader) -> str:
    """Return the newest Element release version, from GitHub or the configured mirror."""
    url = latest_url(settings)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file" and Path(urllib.request.url2pathname(parts.path)).is_dir():
        names = os.listdir(urllib.request.url2pathname(parts.path))
        version = highest_version(_RELEASE_NAME.findall("\n".join(names)))
    else:
        body, final_url = downloader.read(url)
        version = version_from(body, final_url)
    if version is None:
        raise DownloadError(f"no Element release version found at {url}")
    return version
