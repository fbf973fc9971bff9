"""The TLS certificate every public service uses: self-signed, the admin's files, or ACME."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from matrix_stack.base.errors import ValidationError
from matrix_stack.base.files import host_path, lookup_ids
from matrix_stack.base.paths import TLS_DIR
from matrix_stack.base.run import run
from matrix_stack.core.settings import Settings, TlsMode

SELF_SIGNED_CERT_PATH = TLS_DIR / "self-signed.crt"
SELF_SIGNED_KEY_PATH = TLS_DIR / "self-signed.key"
# coturn serves turns: with the same key, so its group may read it.
KEY_GROUP = "turnserver"
RENEW_BEFORE_SECONDS = 30 * 24 * 3600
VALIDITY_DAYS = 3650


def certificate_paths(settings: Settings) -> tuple[str, str] | None:
    """Return (certificate, key) for Apache and coturn; None when mod_md manages them (ACME)."""
    if settings.tls is TlsMode.FILES:
        return settings.tls_cert, settings.tls_key
    if settings.tls is TlsMode.SELF_SIGNED:
        return str(SELF_SIGNED_CERT_PATH), str(SELF_SIGNED_KEY_PATH)
    return None


def certificate_names(certificate: Path) -> set[str]:
    """Return the DNS names in a certificate's subjectAltName (empty if unreadable)."""
    result = run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-ext", "subjectAltName"],
        check=False,
    )
    return set(re.findall(r"DNS:([^,\s]+)", result.stdout)) if result.returncode == 0 else set()


def expires_soon(certificate: Path) -> bool:
    """Return whether the certificate expires within RENEW_BEFORE_SECONDS."""
    result = run(
        [
            "openssl", "x509", "-in", str(certificate), "-noout",
            "-checkend", str(RENEW_BEFORE_SECONDS),
        ],
        check=False,
    )
    return result.returncode != 0


def ensure_self_signed(settings: Settings, root: Path = Path("/")) -> bool:
    """Create the self-signed certificate for every public name unless a valid one exists.

    Return whether a new certificate was made (so Apache and coturn must pick it up).
    """
    if not self_signed_needed(settings, root):
        return False
    make_self_signed(settings, root)
    return True


def self_signed_needed(settings: Settings, root: Path = Path("/")) -> bool:
    """Return whether a self-signed certificate must be made: none yet, expiring, or one
    missing a public name."""
    if settings.tls is not TlsMode.SELF_SIGNED:
        return False
    certificate = host_path(SELF_SIGNED_CERT_PATH, root)
    return not (
        certificate.exists()
        and host_path(SELF_SIGNED_KEY_PATH, root).exists()
        and certificate_names(certificate) == set(settings.certificate_names)
        and not expires_soon(certificate)
    )


def make_self_signed(settings: Settings, root: Path = Path("/")) -> None:
    """Replace the self-signed pair with a new one for every public name (key first)."""
    certificate = host_path(SELF_SIGNED_CERT_PATH, root)
    key = host_path(SELF_SIGNED_KEY_PATH, root)
    names = settings.certificate_names
    certificate.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=certificate.parent, prefix=".new-") as workdir:
        new_key = Path(workdir) / "key"
        new_certificate = Path(workdir) / "crt"
        previous_umask = os.umask(0o077)
        try:
            run(
                [
                    "openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", str(VALIDITY_DAYS), "-subj", f"/CN={names[0]}",
                    "-addext", "subjectAltName=" + ",".join(f"DNS:{name}" for name in names),
                    # A server certificate, not a CA (clients may still pin it as their anchor).
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-addext", "keyUsage=critical,digitalSignature",
                    "-addext", "extendedKeyUsage=serverAuth",
                    "-keyout", str(new_key), "-out", str(new_certificate),
                ]
            )
        finally:
            os.umask(previous_umask)
        if os.geteuid() == 0:
            os.chown(new_key, *lookup_ids("root", _key_group()))
        new_key.chmod(0o640)
        new_certificate.chmod(0o644)
        os.replace(new_key, key)
        os.replace(new_certificate, certificate)


def _key_group() -> str:
    """Return coturn's group when it exists, else root (TURN disabled or coturn not installed)."""
    import grp

    try:
        grp.getgrnam(KEY_GROUP)
    except KeyError:
        return "root"
    return KEY_GROUP


def check_certificate_files(settings: Settings, root: Path = Path("/")) -> None:
    """Check the admin's certificate and key are PEM and belong together (Apache's
    configtest does not load them, so a bad pair would only fail at reload)."""
    if settings.tls is not TlsMode.FILES:
        return
    certificate = host_path(Path(settings.tls_cert), root)
    key = host_path(Path(settings.tls_key), root)
    from_certificate = run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-pubkey"], check=False
    )
    if from_certificate.returncode != 0:
        raise ValidationError(
            f"tls_cert: {settings.tls_cert} is not a PEM certificate; give the certificate file"
        )
    from_key = run(["openssl", "pkey", "-in", str(key), "-pubout"], check=False)
    if from_key.returncode != 0:
        raise ValidationError(
            f"tls_key: {settings.tls_key} is not a readable PEM private key without passphrase"
        )
    if from_key.stdout != from_certificate.stdout:
        raise ValidationError(
            f"tls_key: {settings.tls_key} is not the key of the certificate {settings.tls_cert}"
        )
