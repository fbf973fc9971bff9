"""TURN: ephemeral credentials exactly as Synapse mints them, and a minimal TURN client.

The client speaks just enough of STUN (RFC 5389) and TURN (RFC 5766) to prove a server
works: Allocate with long-term credentials over UDP, TCP or TLS, CreatePermission for a peer
(a denied peer answers 403 Forbidden IP), and Refresh with lifetime 0 to free the
allocation. It uses the standard library only, so that matrix-stack-admin needs no other
package and its start-up stays fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import struct
import time
import zlib
from dataclasses import dataclass, field

from matrix_stack.base.errors import MatrixStackError

MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")
# Methods and classes (RFC 5389 section 6, RFC 5766 section 13).
ALLOCATE, REFRESH, CREATE_PERMISSION = 0x003, 0x004, 0x008
REQUEST, SUCCESS, ERROR = 0b00, 0b10, 0b11
# Attributes.
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
XOR_PEER_ADDRESS, REALM, NONCE, XOR_RELAYED_ADDRESS = 0x0012, 0x0014, 0x0015, 0x0016
REQUESTED_TRANSPORT, XOR_MAPPED_ADDRESS, SOFTWARE, FINGERPRINT = 0x0019, 0x0020, 0x8022, 0x8028
UDP_PROTOCOL = 17
SOFTWARE_NAME = b"matrix-stack-admin turn test"
UDP_ATTEMPTS = 3
# coturn sends error codes without reason phrases: RFC 5389 and RFC 5766 names.
REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden IP", 420: "Unknown Attribute",
    437: "Allocation Mismatch", 438: "Stale Nonce", 441: "Wrong Credentials",
    442: "Unsupported Transport Protocol", 443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached", 500: "Server Error", 508: "Insufficient Capacity",
}


class TurnError(MatrixStackError):
    """The TURN server refused a request (code and reason as it sent them) or did not answer."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}" if code else reason)


def turn_credentials(secret: str, user_id: str, lifetime_s: int, now: float) -> tuple[str, str]:
    """Return (username, password) as Synapse's voip/turnServer mints them at time now."""
    # synapse/rest/client/voip.py: expiry = (time_msec + lifetime_ms) / 1000; "%d:%s".
    expiry = (int(now * 1000) + lifetime_s * 1000) / 1000
    username = "%d:%s" % (expiry, user_id)  # noqa: UP031 - Synapse's own line, %d truncates
    digest = hmac.new(secret.encode(), msg=username.encode(), digestmod=hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def message_type(method: int, message_class: int) -> int:
    """Return the 14-bit STUN message type: method bits interleaved with the two class bits."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def split_type(value: int) -> tuple[int, int]:
    """Return (method, class) of a STUN message type."""
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    return method, ((value >> 4) & 0b01) | ((value >> 7) & 0b10)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Return the long-term credential key MD5(username:realm:password) (RFC 5389 15.4)."""
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()


def encode_xor_address(address: str, port: int, transaction: bytes) -> bytes:
    """Return an XOR-*-ADDRESS value (RFC 5389 15.2)."""
    packed = ipaddress.ip_address(address).packed
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction
    family = 0x01 if len(packed) == 4 else 0x02
    xored = bytes(byte ^ mask[index] for index, byte in enumerate(packed))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored


def decode_xor_address(value: bytes, transaction: bytes) -> tuple[str, int]:
    """Return (address, port) of an XOR-*-ADDRESS value."""
    _, family, port = struct.unpack("!BBH", value[:4])
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction
    size = 4 if family == 0x01 else 16
    packed = bytes(byte ^ mask[index] for index, byte in enumerate(value[4 : 4 + size]))
    return str(ipaddress.ip_address(packed)), port ^ (MAGIC_COOKIE >> 16)


@dataclass
class Message:
    """One STUN message: method, class, transaction ID and attributes in order."""

    method: int
    message_class: int
    transaction: bytes = field(default_factory=lambda: os.urandom(12))
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, kind: int) -> bytes | None:
        """Return the value of the first attribute of this kind, if any."""
        return next((value for found, value in self.attributes if found == kind), None)

    def error(self) -> tuple[int, str]:
        """Return the ERROR-CODE as (code, reason), or (0, '') when there is none."""
        value = self.get(ERROR_CODE)
        if value is None or len(value) < 4:
            return 0, ""
        code = (value[2] & 0x07) * 100 + value[3]
        reason = value[4:].decode("utf-8", "replace").strip()
        return code, reason or REASONS.get(code, "Error")

    def encode(self, key: bytes | None = None) -> bytes:
        """Return the message on the wire, with MESSAGE-INTEGRITY (given a key) and FINGERPRINT."""
        body = b"".join(_attribute(kind, value) for kind, value in self.attributes)
        if key is not None:
            head = self._header(len(body) + 24)
            body += _attribute(MESSAGE_INTEGRITY, hmac.new(key, head + body, hashlib.sha1).digest())
        head = self._header(len(body) + 8)
        crc = zlib.crc32(head + body) ^ FINGERPRINT_XOR
        return head + body + _attribute(FINGERPRINT, struct.pack("!I", crc))

    def _header(self, length: int) -> bytes:
        kind = message_type(self.method, self.message_class)
        return HEADER.pack(kind, length, MAGIC_COOKIE, self.transaction)


def _attribute(kind: int, value: bytes) -> bytes:
    padding = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + padding


def decode_message(data: bytes) -> Message:
    """Return the STUN message in data, or raise TurnError when it is not one."""
    if len(data) < HEADER.size:
        raise TurnError(0, "the answer is not a STUN message (too short)")
    kind, length, cookie, transaction = HEADER.unpack(data[: HEADER.size])
    if cookie != MAGIC_COOKIE or kind & 0xC000 or len(data) < HEADER.size + length:
        raise TurnError(0, "the answer is not a STUN message")
    method, message_class = split_type(kind)
    message = Message(method, message_class, transaction)
    offset, end = HEADER.size, HEADER.size + length
    while offset + 4 <= end:
        attribute, size = struct.unpack("!HH", data[offset : offset + 4])
        message.attributes.append((attribute, data[offset + 4 : offset + 4 + size]))
        offset += 4 + size + (-size % 4)
    return message


class TurnClient:
    """One connection to a TURN server (udp, tcp or tls), authenticated on first use."""

    def __init__(
        self,
        address: str,
        port: int,
        transport: str,
        *,
        timeout: float = 3.0,
        tls_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.username = ""
        self.password = ""
        self.key: bytes | None = None
        self.realm = b""
        self.nonce = b""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            if transport == "tls":
                context = tls_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=server_name or address)
        except OSError as error:
            sock.close()
            reason = (
                getattr(error, "verify_message", None)  # a certificate that does not verify
                or getattr(error, "reason", None)
                or error.strerror
                or str(error)
            )
            raise TurnError(0, f"cannot connect to {address} port {port}: {reason}") from None
        self.sock = sock

    def close(self) -> None:
        """Close the connection (the server frees an unrefreshed allocation by itself)."""
        self.sock.close()

    def __enter__(self) -> TurnClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def peer_certificate(self) -> bytes:
        """Return the server's certificate (DER) on a TLS connection."""
        assert isinstance(self.sock, ssl.SSLSocket)
        return self.sock.getpeercert(binary_form=True) or b""

    def allocate(self, username: str, password: str, lifetime: int = 60) -> tuple[str, int]:
        """Allocate a UDP relay with these credentials; return the relayed address."""
        self.username = username
        self.password = password
        response = self.request(
            ALLOCATE,
            [
                (REQUESTED_TRANSPORT, struct.pack("!B3x", UDP_PROTOCOL)),
                (LIFETIME, struct.pack("!I", lifetime)),
            ],
        )
        relayed = response.get(XOR_RELAYED_ADDRESS)
        if relayed is None:
            raise TurnError(0, "the Allocate answer has no XOR-RELAYED-ADDRESS")
        return decode_xor_address(relayed, response.transaction)

    def create_permission(self, peer: str) -> None:
        """Ask to exchange data with peer; raise TurnError (403 for a denied peer) if refused."""
        self.request(CREATE_PERMISSION, [], peer=peer)

    def release(self) -> None:
        """Free the allocation now (Refresh with lifetime 0), so it counts against no quota."""
        self.request(REFRESH, [(LIFETIME, struct.pack("!I", 0))])

    def request(
        self, method: int, attributes: list[tuple[int, bytes]], *, peer: str | None = None
    ) -> Message:
        """Send one authenticated request; answer a 401 or 438 challenge once, as RFC 5766 says."""
        for _ in range(3):
            request = Message(method, REQUEST, attributes=list(attributes))
            if peer is not None:
                # XOR-PEER-ADDRESS: an IPv6 address is masked with the transaction ID too.
                value = encode_xor_address(peer, 0, request.transaction)
                request.attributes.append((XOR_PEER_ADDRESS, value))
            request.attributes.append((SOFTWARE, SOFTWARE_NAME))
            if self.key is not None:
                request.attributes += [
                    (USERNAME, self.username.encode()), (REALM, self.realm), (NONCE, self.nonce)
                ]
            response = self._exchange(request)
            if response.message_class == SUCCESS:
                return response
            code, reason = response.error()
            challenged = code == 401 and self.key is None
            if (challenged or code == 438) and response.get(NONCE) is not None:
                self.realm = response.get(REALM) or self.realm
                self.nonce = response.get(NONCE) or b""
                realm = self.realm.decode("utf-8", "replace")
                self.key = long_term_key(self.username, realm, self.password)
                continue
            raise TurnError(code, reason)
        raise TurnError(0, "the server kept asking for authentication")

    def _exchange(self, request: Message) -> Message:
        data = request.encode(self.key)
        attempts = UDP_ATTEMPTS if self.transport == "udp" else 1
        for _ in range(attempts):
            try:
                self.sock.sendall(data)
                response = self._receive()
            except TimeoutError:
                continue
            except OSError as error:
                raise TurnError(0, f"connection failed: {error.strerror or error}") from None
            if response.transaction == request.transaction:
                return response
        raise TurnError(0, f"no answer over {self.transport} within {attempts * self.timeout:g} s")

    def _receive(self) -> Message:
        if self.transport == "udp":
            return decode_message(self.sock.recv(65535))
        head = self._read_exactly(HEADER.size)
        length = struct.unpack("!H", head[2:4])[0]
        return decode_message(head + self._read_exactly(length))

    def _read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise TurnError(0, "the server closed the connection")
            data += chunk
        return data


def elapsed_ms(started: float) -> int:
    """Return the milliseconds since started (time.monotonic())."""
    return round((time.monotonic() - started) * 1000)
