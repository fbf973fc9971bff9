"""HTTP/1.1 to a program on this host's loopback: one request a connection, never a proxy.

http.client and urllib.request cost matrix-stack-admin 30 to 45 ms of imports (email, ssl),
more than Synapse takes to answer a page of a thousand users. A plain socket speaking the
little of HTTP/1.1 a JSON API needs costs nothing, and having no proxy code at all, it cannot
send the admin token to a proxy that http_proxy and the like name.
"""

from __future__ import annotations

import socket

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from collections.abc import Mapping

RECEIVE_SIZE = 65536
MAX_HEAD = 65536


class NotHTTP(ConnectionError):
    """The program on the other end did not answer in HTTP/1 (the message quotes it)."""


class Answer:
    """An HTTP answer: status, reason phrase, content type (lowercase, no parameters), body."""

    __slots__ = ("body", "content_type", "reason", "status")

    def __init__(self, status: int, reason: str, content_type: str, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.content_type = content_type
        self.body = body


def split_url(base_url: str) -> tuple[str, int]:
    """Return the host and port of an http:// URL with no path."""
    scheme, _, location = base_url.partition("://")
    if scheme != "http" or not location or "/" in location.rstrip("/"):
        raise ValueError(f"{base_url!r} is not an http://HOST:PORT URL")
    host, colon, port = location.rstrip("/").rpartition(":")
    if not colon or not port.isdigit():
        host, port = location.rstrip("/"), "80"
    return host.strip("[]"), int(port)


def exchange(
    base_url: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    data: bytes | None,
    timeout: float,
) -> Answer:
    """Send one request to base_url and return the answer; OSError (NotHTTP too) on failure."""
    host, port = split_url(base_url)
    location = base_url.partition("://")[2].rstrip("/")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {location}", "Connection: close",
             "Accept-Encoding: identity", *(f"{name}: {value}" for name, value in headers.items())]
    if data is not None:
        lines.append(f"Content-Length: {len(data)}")
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("a line break in a request line or header")
    request = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (data or b"")
    # Not create_connection: its getaddrinfo imports the idna codec (2 ms) for any host.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as connection:
        connection.settimeout(timeout)
        connection.connect((host, port))
        connection.sendall(request)
        return read_answer(connection)


def read_answer(connection: socket.socket) -> Answer:
    """Read one answer: its head, then a body of Content-Length, chunked, or up to the end."""
    received = bytearray()
    while b"\r\n\r\n" not in received and len(received) <= MAX_HEAD:
        chunk = connection.recv(RECEIVE_SIZE)
        if not chunk:
            break
        received += chunk
    head, separator, rest = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").splitlines() or [""]
    version, _, status_and_reason = status_line.partition(" ")
    status, _, reason = status_and_reason.partition(" ")
    if not (separator and version.startswith("HTTP/1.") and len(status) == 3
            and status.isdigit()):
        raise NotHTTP(" ".join(status_line.split()) or "it closed the connection, no answer")
    fields = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip().lower()] = value.strip()
    body = bytearray(rest)
    length = fields.get("content-length", "")
    if "chunked" in fields.get("transfer-encoding", "").lower():
        body = bytearray(dechunk(read_to_end(connection, body)))
    elif length.isdigit():
        while len(body) < int(length):
            chunk = connection.recv(RECEIVE_SIZE)
            if not chunk:
                raise NotHTTP(f"the answer ended after {len(body)} of {length} bytes")
            body += chunk
        del body[int(length):]
    else:
        body = read_to_end(connection, body)
    kind = fields.get("content-type", "").split(";")[0].strip().lower()
    # As email.message's get_content_type(): anything but one type/subtype is text/plain.
    return Answer(int(status), reason.strip(), kind if kind.count("/") == 1 else "text/plain",
                  bytes(body))


def read_to_end(connection: socket.socket, received: bytearray) -> bytearray:
    while chunk := connection.recv(RECEIVE_SIZE):
        received += chunk
    return received


def dechunk(data: bytes | bytearray) -> bytes:
    """Return the body a chunked transfer coding carries (RFC 9112, section 7.1)."""
    body = bytearray()
    position = 0
    while True:
        line_end = data.find(b"\r\n", position)
        size_text = bytes(data[position:line_end]).split(b";")[0].strip()
        try:
            size = int(size_text, 16) if line_end >= 0 else -1
        except ValueError:
            size = -1
        if size < 0 or len(data) < line_end + 2 + size:
            raise NotHTTP("a chunked answer is cut short or malformed")
        if size == 0:
            return bytes(body)
        body += data[line_end + 2:line_end + 2 + size]
        position = line_end + 2 + size + 2
