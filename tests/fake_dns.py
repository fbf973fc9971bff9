"""A DNS server on loopback for tests (dnspython, a test dependency): SRV records for
_matrix-fed._tcp.example.org, SERVFAIL for broken.example.org's names, NXDOMAIN otherwise."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

SRV_NAME = "_matrix-fed._tcp.example.org"
SRV_RECORDS = ("20 0 8449 backup.example.org.", "10 5 8448 fed.example.org.")


@contextlib.contextmanager
def fake_dns_server(address: str = "127.0.0.1") -> Iterator[str]:
    """Serve the answers above over UDP; yield the server's HOST:PORT."""
    import dns.message
    import dns.rcode
    import dns.rrset

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                wire, client = server.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            name = query.question[0].name.to_text()
            if name == f"{SRV_NAME}.":
                response.answer.append(dns.rrset.from_text(name, 300, "IN", "SRV",
                                                           *SRV_RECORDS))
            elif name.endswith(".broken.example.org."):
                response.set_rcode(dns.rcode.SERVFAIL)
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            server.sendto(response.to_wire(), client)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"{address}:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        server.close()
