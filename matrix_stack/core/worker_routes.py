"""Which request paths go to which kind of worker: the regular expressions of Synapse's
docs/workers.md (synapse.app.generic_worker, media_repository), grouped by kind.

Anything not listed goes to the main process. Left out on purpose: the GET-only endpoints
(push rules, account data, presence: Apache's ProxyPassMatch cannot tell methods apart),
pagination (/messages must stay on one process per room), SSO and the admin API (never
proxied from outside).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

SYNC = (
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/events$",
    r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
    # Sliding sync (MSC3575, simplified), served by the same servlet module as /sync; the
    # documented list misses it.
    r"^/_matrix/client/unstable/org\.matrix\.simplified_msc3575/sync$",
)

FEDERATION = (
    r"^/_matrix/federation/v1/version$",
    r"^/_matrix/federation/v1/event/",
    r"^/_matrix/federation/v1/state/",
    r"^/_matrix/federation/v1/state_ids/",
    r"^/_matrix/federation/v1/backfill/",
    r"^/_matrix/federation/v1/get_missing_events/",
    r"^/_matrix/federation/v1/publicRooms",
    r"^/_matrix/federation/v1/query/",
    r"^/_matrix/federation/v1/make_join/",
    r"^/_matrix/federation/v1/make_leave/",
    r"^/_matrix/federation/(v1|v2)/send_join/",
    r"^/_matrix/federation/(v1|v2)/send_leave/",
    r"^/_matrix/federation/v1/make_knock/",
    r"^/_matrix/federation/v1/send_knock/",
    r"^/_matrix/federation/(v1|v2)/invite/",
    r"^/_matrix/federation/v1/event_auth/",
    r"^/_matrix/federation/v1/timestamp_to_event/",
    r"^/_matrix/federation/v1/exchange_third_party_invite/",
    r"^/_matrix/federation/v1/user/devices/",
    r"^/_matrix/key/v2/query",
    r"^/_matrix/federation/v1/hierarchy/",
    # Inbound transactions.
    r"^/_matrix/federation/v1/send/",
)

CLIENT = (
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/createRoom$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/publicRooms$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/joined_members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/context/.*$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state$",
    r"^/_matrix/client/v1/rooms/.*/hierarchy$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    r"^/_matrix/client/unstable/im.nheko.summary/summary/.*$",
    r"^/_matrix/client/v1/room_summary/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/account/3pid$",
    r"^/_matrix/client/(r0|v3|unstable)/account/whoami$",
    r"^/_matrix/client/(r0|v3|unstable)/account/deactivate$",
    r"^/_matrix/client/(r0|v3)/delete_devices$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/devices(/|$)",
    r"^/_matrix/client/versions$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/voip/turnServer$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/event/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/joined_rooms$",
    r"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/search$",
    r"^/_matrix/client/(r0|v3|unstable)/user/.*/filter(/|$)",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/directory/room/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/capabilities$",
    r"^/_matrix/client/(r0|v3|unstable)/notifications$",
    # Encryption.
    r"^/_matrix/client/(r0|v3|unstable)/keys/query$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/changes$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/claim$",
    r"^/_matrix/client/(r0|v3|unstable)/room_keys/",
    r"^/_matrix/client/(r0|v3|unstable)/keys/upload",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/device_signing/upload$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/signatures/upload$",
    # Registration and login.
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login$",
    r"^/_matrix/client/(r0|v3|unstable)/register$",
    r"^/_matrix/client/(r0|v3|unstable)/register/available$",
    r"^/_matrix/client/v1/register/m.login.registration_token/validity$",
    r"^/_matrix/client/(r0|v3|unstable)/password_policy$",
    # Sending events (persisted by the main process, over replication).
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/redact",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/join/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/knock/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/profile/",
    r"^/_matrix/client/(r0|v3|unstable)/user_directory/search$",
    # Delayed events (MSC4140): listing and restarting; the others only run on main.
    r"^/_matrix/client/unstable/org.matrix.msc4140/delayed_events(/.*/restart)?$",
)

# synapse.app.media_repository: every path under these prefixes (the main process no
# longer serves media once enable_media_repo is false).
MEDIA = (
    r"^/_matrix/media/",
    r"^/_matrix/client/v1/media/",
    r"^/_matrix/federation/v1/media/",
)

ROUTES_OF_KIND = {
    "sync": SYNC,
    "client": CLIENT,
    "federation-reader": FEDERATION,
    "media": MEDIA,
}


def apache_pattern(pattern: str) -> str:
    """Return pattern for ProxyPassMatch with nocanon.

    mod_proxy matches the decoded path, then, to forward the request unchanged (nocanon),
    the raw request line with its query string: an expression ending in $ would then fail
    on '?since=...' and Apache would forward the decoded path instead (a room alias's %23
    becoming '#'). So a final $ also admits a query string.
    """
    return pattern[:-1] + r"(\?|$)" if pattern.endswith("$") else pattern


# /sync sticky by user, as Synapse's docs/workers.md advises under "Load balancing" (a sync
# worker's caches then hold its users' rooms): its key is the localpart in a syt_ access token,
# else the whole token, from the Authorization header, else from the access_token parameter.
# The proxy hashes the key; for Apache, the first hex digit of its MD5 sum picks the worker.
HEX_DIGITS = "0123456789abcdef"


def sync_pattern() -> str:
    """Return one expression matching every sync path (a path without its query string)."""
    return "|".join(SYNC)


def hex_partitions(count: int) -> tuple[str, ...]:
    """Return, for count workers, the regex character class of first hex digits each takes:
    contiguous runs, their sizes differing by one at most, together every digit once."""
    if not 0 < count <= len(HEX_DIGITS):
        raise ValueError(f"cannot share {len(HEX_DIGITS)} hex digits among {count} workers")
    bounds = [index * len(HEX_DIGITS) // count for index in range(count + 1)]
    return tuple(_hex_class(HEX_DIGITS[start:end]) for start, end in pairwise(bounds))


def _hex_class(digits: str) -> str:
    """Return a character class for a run of hex digits, ranges never spanning 9 to a."""
    runs = [run for run in (
        "".join(digit for digit in digits if digit.isdigit()),
        "".join(digit for digit in digits if not digit.isdigit()),
    ) if run]
    return "[" + "".join(run if len(run) < 3 else f"{run[0]}-{run[-1]}" for run in runs) + "]"


@dataclass(frozen=True)
class WorkerBackend:
    """The workers of one kind, as the proxy reaches them, and the paths they serve."""

    kind: str
    patterns: tuple[str, ...]
    servers: tuple[tuple[str, int], ...]  # worker name, loopback port

    @property
    def name(self) -> str:
        return f"synapse-{self.kind}"

    @property
    def path_regexp(self) -> str:
        return "|".join(self.patterns)
