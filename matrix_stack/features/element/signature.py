"""Element's release signing key, pinned by fingerprint, and signature checks with gpgv.

The key is downloaded, never trusted on its own: only the OpenPGP key block whose primary
fingerprint equals the pin is kept (any other key in the download is dropped), and gpgv's
VALIDSIG line must name that primary key. Reading a fingerprint needs no gpg: a v4
fingerprint is the SHA-1 of the key packet (RFC 4880 12.2), a v6 one its SHA-256 (RFC 9580).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from pathlib import Path

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.run import run

_PUBLIC_KEY, _PUBLIC_SUBKEY = 6, 14


class SignatureError(MatrixStackError):
    """A signature or signing key was refused."""


class KeyMismatchError(SignatureError):
    """The signature is not by the kept key (unknown subkey) or the key has expired."""


def dearmor(data: bytes) -> bytes:
    """Return the binary OpenPGP data of an ASCII-armored block (binary data unchanged)."""
    text = data.decode("ascii", errors="replace")
    match = re.search(r"-----BEGIN PGP [A-Z ]+-----\r?\n(.*?)-----END PGP", text, re.S)
    if match is None:
        return data
    body = match.group(1).replace("\r", "")
    # Armor headers ("Comment: ...") end at the first empty line.
    if "\n\n" in body:
        body = body.split("\n\n", 1)[1]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("=")]  # the CRC-24 line
    try:
        return base64.b64decode("".join(lines), validate=True)
    except ValueError:
        raise SignatureError("the signing key's armor is not valid base64") from None


def packets(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Return the OpenPGP packets of data as (tag, whole packet, body)."""
    found = []
    offset = 0
    while offset < len(data):
        start, first = offset, data[offset]
        if not first & 0x80:
            raise SignatureError("the signing key is not OpenPGP data")
        if first & 0x40:  # new format: tag in six bits, length octets follow
            tag, offset = first & 0x3F, offset + 1
            octet = data[offset] if offset < len(data) else 0
            if octet < 192:
                length, offset = octet, offset + 1
            elif octet < 224:
                length = ((octet - 192) << 8) + data[offset + 1] + 192
                offset += 2
            elif octet == 255:
                length, offset = int.from_bytes(data[offset + 1 : offset + 5], "big"), offset + 5
            else:
                raise SignatureError("the signing key uses partial packet lengths")
        else:  # old format: tag in four bits, length type in two
            tag, kind, offset = (first >> 2) & 0x0F, first & 0x03, offset + 1
            if kind == 3:
                raise SignatureError("the signing key has a packet of indeterminate length")
            size = (1, 2, 4)[kind]
            length = int.from_bytes(data[offset : offset + size], "big")
            offset += size
        if offset + length > len(data):
            raise SignatureError("the signing key is truncated")
        found.append((tag, data[start : offset + length], data[offset : offset + length]))
        offset += length
    return found


def fingerprint(body: bytes) -> str:
    """Return the fingerprint of a public key packet body (v4 or v6) as upper-case hex."""
    if body[:1] == b"\x04":
        digest = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body, usedforsecurity=False)
        return digest.hexdigest().upper()
    if body[:1] in (b"\x05", b"\x06"):
        prefix = b"\x9a" if body[:1] == b"\x05" else b"\x9b"
        return hashlib.sha256(prefix + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise SignatureError(f"the signing key has an unsupported version {body[:1].hex()}")


def key_blocks(data: bytes) -> dict[str, bytes]:
    """Return each key block of (armored or binary) key data by primary fingerprint."""
    blocks: dict[str, bytes] = {}
    current: str | None = None
    for tag, packet, body in packets(dearmor(data)):
        if tag == _PUBLIC_KEY:
            current = fingerprint(body)
            blocks[current] = b""
        if current is not None:
            blocks[current] += packet
    return blocks


def pinned_keyring(data: bytes, pin: str, source: str) -> bytes:
    """Return only the key block whose primary fingerprint is pin, or refuse the key."""
    blocks = key_blocks(data)
    if pin in blocks:
        return blocks[pin]
    found = ", ".join(blocks) or "no public key"
    raise SignatureError(
        f"the key at {source} is not Element's release key: fingerprint {found}, expected "
        f"{pin} (element_key_fingerprint in /etc/matrix-stack/stack.yaml)"
    )


def keyring_matches(path: Path, pin: str) -> bool:
    """Return whether the kept keyring holds exactly the pinned key."""
    try:
        return list(key_blocks(path.read_bytes())) == [pin]
    except (OSError, SignatureError):
        return False


def write_keyring(keyring: bytes, path: Path) -> None:
    """Keep the accepted key as a binary keyring (0644) for later verifications, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".keyring-", delete=False) as stream:
        stream.write(keyring)
        stream.flush()
        os.fsync(stream.fileno())
    os.chmod(stream.name, 0o644)
    os.replace(stream.name, path)


def verify(tarball: Path, signature: Path, keyring: Path, pin: str) -> None:
    """Check signature over tarball with gpgv; raise SignatureError saying why it is refused."""
    with tempfile.TemporaryDirectory(prefix="matrix-stack-gpgv-") as home:
        result = run(
            ["gpgv", "--homedir", home, "--status-fd", "1", "--keyring", str(keyring),
             str(signature), str(tarball)],
            check=False,
            timeout=120,
        )
    status: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "[GNUPG:]":
            status.setdefault(words[1], words[2:])
    name = tarball.name
    if "VALIDSIG" in status and result.returncode == 0:
        primary = status["VALIDSIG"][-1].upper()
        for refused, why in (("REVKEYSIG", "revoked"), ("EXPKEYSIG", "expired")):
            if refused in status:
                raise KeyMismatchError(f"{name} is signed by a {why} key; it was not installed")
        if primary != pin:
            raise SignatureError(f"{name} is signed by {primary}, not by Element's key {pin}")
        return
    if "BADSIG" in status:
        raise SignatureError(
            f"the signature does not match {name}: the download is corrupt or tampered with"
        )
    error = status.get("ERRSIG", [])
    # ERRSIG's rc 9: no such public key; 6: a subkey without a valid binding to the key.
    if "NO_PUBKEY" in status or error[5:6] in (["9"], ["6"]):
        key = error[6] if len(error) > 6 else error[0] if error else status["NO_PUBKEY"][0]
        raise KeyMismatchError(
            f"{name} is signed by another key ({key}), not by Element's key {pin}"
        )
    if "NODATA" in status:
        raise SignatureError(f"the signature of {name} is not an OpenPGP signature")
    lines = result.stderr.strip().splitlines() or ["no output"]
    raise SignatureError(f"gpgv could not verify {name} (exit {result.returncode}): {lines[-1]}")
