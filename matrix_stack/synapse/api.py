"""Synapse's client and admin APIs on 127.0.0.1:8008, with the stdlib only (fast start-up).

matrix-stack-admin authenticates as a service account, @matrix-stack:SERVER, an admin made by
shared-secret registration. Its token is cached root-only; Synapse rate-limits logins, so the
password (also root-only) is used only when the cached token stops working.
"""

from __future__ import annotations

import json

from matrix_stack.base.errors import MatrixStackError, UsageError

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    import urllib.request
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path
    from typing import Any

    from matrix_stack.base import loopback_http

SYNAPSE_URL = "http://127.0.0.1:8008"
SERVICE_LOCALPART = "matrix-stack"
ADMIN = "/_synapse/admin"
# Users a page of GET /_synapse/admin/v2/users holds: Synapse sets no upper bound, and one
# request for a server of a few thousand accounts is faster than several (issue 20).
PAGE_SIZE = 5000
# Synapse's own limits (synapse/rest/admin/users.py, rest/client/register.py).
MAX_LOCALPART = 255


class SynapseError(MatrixStackError):
    """Synapse answered with an error (errcode and HTTP status kept for callers)."""

    def __init__(self, status: int, errcode: str, message: str) -> None:
        self.status = status
        self.errcode = errcode
        super().__init__(message)


if TYPE_CHECKING:
    from typing import NamedTuple

    class _UserIdFields(NamedTuple):
        localpart: str
        server_name: str
else:  # dataclasses and typing.NamedTuple would cost the command line milliseconds
    from collections import namedtuple

    _UserIdFields = namedtuple("UserId", ["localpart", "server_name"])


class UserId(_UserIdFields):
    """A user of this server, @localpart:server_name."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"@{self.localpart}:{self.server_name}"


def parse_user(name: str, server_name: str) -> UserId:
    """Return the user a localpart or a full @user:server names; refuse other servers' users."""
    text = name.strip()
    if text.startswith("@"):
        localpart, sep, server = text[1:].partition(":")
        if not sep:
            raise UsageError(f"{name!r} is not a user ID: write @user:{server_name} or just user")
        if server.lower() != server_name:
            raise UsageError(f"{text} is not a user of this server ({server_name})")
    else:
        localpart = text
    if not localpart or len(localpart) > MAX_LOCALPART or not all(
        character.isascii() and (character.isalnum() or character in "._=-/+")
        for character in localpart
    ):
        raise UsageError(
            f"{name!r} is not a valid user name (letters, digits and . _ = - / +)"
        )
    return UserId(localpart.lower(), server_name)


def direct_opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    """Return an opener that never uses a proxy, whatever http_proxy and the like say.

    urlopen honours those variables, and no_proxy rarely names 127.0.0.1:8008: the admin
    token and passwords sent to Synapse would go to the proxy.
    """
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), *handlers)


def registration_mac(
    shared_secret: str, nonce: str, username: str, password: str, admin: bool
) -> str:
    """Return the HMAC-SHA1 Synapse expects for shared-secret registration (register_api.md)."""
    import hashlib
    import hmac

    mac = hmac.new(shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode("utf-8"))
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


class Synapse:
    """One Synapse, reached on loopback; token is the admin token used for /_synapse/admin."""

    def __init__(
        self,
        base_url: str = SYNAPSE_URL,
        token: str | None = None,
        timeout: float = 30,
        renew_token: Callable[[], str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.timeout = timeout
        self.renew_token = renew_token

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        authenticated: bool = True,
    ) -> Any:
        """Send one request and return its JSON; raise SynapseError or a one-line error.

        A rejected admin token is renewed once (renew_token) and the request sent again.
        """
        try:
            return self._send(method, path, body, authenticated)
        except SynapseError as error:
            if not (authenticated and error.status == 401 and self.renew_token):
                raise
            self.token = self.renew_token()
            self.renew_token = None
            return self._send(method, path, body, authenticated)

    def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, authenticated: bool
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if authenticated and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        shown = path.split("?")[0]
        from matrix_stack.base.loopback_http import exchange

        try:
            answer = exchange(self.base_url, method, path, headers, data, self.timeout)
        except OSError as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise MatrixStackError(
                f"Synapse does not answer on {self.base_url} ({reason}); is it running? "
                "see: systemctl status matrix-synapse"
            ) from None
        document = self._json(method, shown, answer)
        if not 200 <= answer.status < 300:
            raise SynapseError(
                answer.status,
                str(document.get("errcode", "")),
                f"Synapse refused {method} {shown}: "
                f"{document.get('error', answer.reason)} ({answer.status})",
            )
        return document

    def _json(self, method: str, shown: str, answer: loopback_http.Answer) -> dict[str, Any]:
        """Return an answer's JSON object; anything else is not Synapse speaking."""
        try:
            document = json.loads(answer.body)
        except ValueError:  # UnicodeDecodeError too
            document = None
        if isinstance(document, dict):
            return document
        kind = answer.content_type if answer.body else "empty"
        raise MatrixStackError(
            f"Synapse's answer to {method} {shown} is no JSON object (HTTP {answer.status}, "
            f"{kind}): is another program listening on {self.base_url}? "
            "see: systemctl status matrix-synapse"
        )

    def answers(self) -> bool:
        """Return whether Synapse answers its client API at all."""
        try:
            self.request("GET", "/_matrix/client/versions", authenticated=False)
        except MatrixStackError:
            return False
        return True

    def register(
        self,
        user: UserId,
        password: str,
        *,
        admin: bool,
        shared_secret: str,
        inhibit_login: bool = True,
    ) -> dict[str, Any]:
        """Create a user with shared-secret registration; raise SynapseError M_USER_IN_USE."""
        path = f"{ADMIN}/v1/register"
        nonce = self.request("GET", path, authenticated=False)["nonce"]
        body = {
            "nonce": nonce,
            "username": user.localpart,
            "password": password,
            "admin": admin,
            "inhibit_login": inhibit_login,
            "mac": registration_mac(shared_secret, nonce, user.localpart, password, admin),
        }
        result: dict[str, Any] = self.request("POST", path, body, authenticated=False)
        return result

    def login(self, user: UserId, password: str) -> str:
        """Log in with a password and return the access token."""
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": str(user)},
            "password": password,
            "initial_device_display_name": "matrix-stack-admin",
        }
        result = self.request("POST", "/_matrix/client/v3/login", body, authenticated=False)
        return str(result["access_token"])

    def users(
        self, *, include_deactivated: bool, user_id: str | None = None, admins: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Yield every local user (see user_pages)."""
        for page in self.user_pages(
            include_deactivated=include_deactivated, user_id=user_id, admins=admins
        ):
            yield from page

    def user_pages(
        self, *, include_deactivated: bool, user_id: str | None = None, admins: bool = False
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield the local users page after page, each as it arrives.

        user_id keeps only users whose ID contains it, admins only administrators.
        """
        import urllib.parse

        start = "0"
        while True:
            fields = {
                "from": start,
                "limit": PAGE_SIZE,
                "deactivated": "true" if include_deactivated else "false",
                "order_by": "name",
            }
            if user_id is not None:
                fields["user_id"] = user_id
            if admins:
                fields["admins"] = "true"
            query = urllib.parse.urlencode(fields)
            page = self.request("GET", f"{ADMIN}/v2/users?{query}")
            yield list(page.get("users", []))
            start = page.get("next_token") or ""
            if not start:
                return

    def user(self, user: UserId) -> dict[str, Any]:
        """Return the admin API's account details; unknown users raise a one-line error."""
        try:
            result: dict[str, Any] = self.request("GET", f"{ADMIN}/v2/users/{quote(user)}")
        except SynapseError as error:
            if error.status == 404:
                raise MatrixStackError(f"no user {user} on this server") from None
            raise
        return result

    def deactivate(self, user: UserId, *, erase: bool) -> None:
        self.request("POST", f"{ADMIN}/v1/deactivate/{quote(user)}", {"erase": erase})

    def reset_password(self, user: UserId, password: str, *, logout_devices: bool) -> None:
        self.request(
            "POST",
            f"{ADMIN}/v1/reset_password/{quote(user)}",
            {"new_password": password, "logout_devices": logout_devices},
        )


def quote(user: UserId) -> str:
    """Return the user ID percent-encoded for a URL path."""
    import urllib.parse

    return urllib.parse.quote(str(user), safe="")


def read_root_secret(path: Path, root: Path | None = None) -> str:
    try:
        return _on(path, root).read_text(encoding="utf-8").strip()
    except PermissionError:
        raise MatrixStackError("this needs root: run it as root") from None
    except FileNotFoundError:
        raise MatrixStackError(
            f"{path} is missing; run: dpkg-reconfigure matrix-stack"
        ) from None


def _save_root_only(path: Path, text: str, root: Path | None) -> None:
    from pathlib import Path

    from matrix_stack.base.files import FileSpec, write_atomic

    write_atomic(FileSpec(path, text + "\n", 0o600, "root", "root"), root or Path("/"))


def service_account(server_name: str) -> UserId:
    return UserId(SERVICE_LOCALPART, server_name)


def _on(path: Path, root: Path | None) -> Path:
    return root / path.relative_to("/") if root else path


def admin_session(server_name: str | Callable[[], str], root: Path | None = None) -> Synapse:
    """Return a client with the cached admin token, renewed (once) if Synapse rejects it.

    server_name may be a function, called only when a token has to be made (it reads YAML).
    """
    from matrix_stack.base.paths import TOKEN_PATH

    def renew() -> str:
        name = server_name if isinstance(server_name, str) else server_name()
        return new_admin_token(synapse, name, root)

    synapse = Synapse(renew_token=renew)
    if _on(TOKEN_PATH, root).exists():
        synapse.token = read_root_secret(TOKEN_PATH, root)
    else:
        synapse.token = renew()
    return synapse


def new_admin_token(synapse: Synapse, server_name: str, root: Path | None = None) -> str:
    """Create the service admin on first use (shared secret), else log it in; cache the token."""
    import secrets

    from matrix_stack.base.paths import SERVICE_PASSWORD_PATH, TOKEN_PATH
    from matrix_stack.base.secrets import REGISTRATION_SECRET_PATH

    service = service_account(server_name)
    if not _on(SERVICE_PASSWORD_PATH, root).exists():
        _save_root_only(SERVICE_PASSWORD_PATH, secrets.token_urlsafe(32), root)
    password = read_root_secret(SERVICE_PASSWORD_PATH, root)
    try:
        result = synapse.register(
            service,
            password,
            admin=True,
            shared_secret=read_root_secret(REGISTRATION_SECRET_PATH, root),
            inhibit_login=False,
        )
        token = str(result["access_token"])
    except SynapseError as error:
        if error.errcode != "M_USER_IN_USE":
            raise
        token = synapse.login(service, password)
    _save_root_only(TOKEN_PATH, token, root)
    return token


def modify_user(synapse: Synapse, user: UserId, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Change an existing account through PUT /_synapse/admin/v2/users (never creating one)."""
    synapse.user(user)  # PUT would create an unknown user: refuse that first
    result: dict[str, Any] = synapse.request("PUT", f"{ADMIN}/v2/users/{quote(user)}", fields)
    return result


def email_threepids(details: Mapping[str, Any], address: str) -> list[dict[str, str]]:
    """Return the account's third-party IDs with address as its one e-mail address.

    PUT /_synapse/admin/v2/users replaces the whole list: phone numbers are kept.
    """
    kept = [
        {"medium": str(threepid["medium"]), "address": str(threepid["address"])}
        for threepid in details.get("threepids") or []
        if threepid.get("medium") != "email"
    ]
    return [*kept, {"medium": "email", "address": address}]


def emails(details: Mapping[str, Any]) -> list[str]:
    """Return the account's bound e-mail addresses."""
    return [
        str(threepid["address"])
        for threepid in details.get("threepids") or []
        if threepid.get("medium") == "email"
    ]


def user_of_email(synapse: Synapse, address: str) -> str | None:
    """Return the user ID an e-mail address is bound to, None when to nobody."""
    import urllib.parse

    path = f"{ADMIN}/v1/threepid/email/users/{urllib.parse.quote(address, safe='')}"
    try:
        result = synapse.request("GET", path)
    except SynapseError as error:
        if error.status == 404:
            return None
        raise
    return str(result["user_id"])


def devices(synapse: Synapse, user: UserId) -> list[dict[str, Any]]:
    """Return the user's devices (sessions)."""
    result = synapse.request("GET", f"{ADMIN}/v2/users/{quote(user)}/devices")
    return list(result.get("devices", []))


def delete_devices(synapse: Synapse, user: UserId, device_ids: list[str]) -> None:
    """End the given sessions (their access tokens stop working at once)."""
    synapse.request(
        "POST", f"{ADMIN}/v2/users/{quote(user)}/delete_devices", {"devices": device_ids}
    )


def registration_tokens(synapse: Synapse) -> list[dict[str, Any]]:
    result = synapse.request("GET", f"{ADMIN}/v1/registration_tokens")
    return list(result.get("registration_tokens", []))


def new_registration_token(
    synapse: Synapse, uses: int | None, expiry_ms: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"uses_allowed": uses, "expiry_time": expiry_ms}
    result: dict[str, Any] = synapse.request(
        "POST", f"{ADMIN}/v1/registration_tokens/new", body
    )
    return result


def revoke_registration_token(synapse: Synapse, token: str) -> None:
    import urllib.parse

    path = f"{ADMIN}/v1/registration_tokens/{urllib.parse.quote(token, safe='')}"
    try:
        synapse.request("DELETE", path)
    except SynapseError as error:
        if error.status == 404:
            raise MatrixStackError("no such registration token") from None
        raise


def background_updates_pending(synapse: Synapse) -> bool:
    """Return whether Synapse is still running database background updates (new indexes)."""
    status = synapse.request("GET", f"{ADMIN}/v1/background_updates/status")
    return bool(status.get("current_updates"))
