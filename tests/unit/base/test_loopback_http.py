"""loopback_http: the little of HTTP/1.1 matrix-stack-admin speaks to Synapse on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from matrix_stack.base.loopback_http import Answer, NotHTTP, dechunk, exchange, split_url

Listener = tuple[str, list[bytes], list[bytes]]


@pytest.fixture
def answering() -> Iterator[Listener]:
    """A listener that answers each connection with the next canned answer; yields its URL,
    the answers to give and the requests it received."""
    listener = socket.create_server(("127.0.0.1", 0))
    answers: list[bytes] = []
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += connection.recv(65536)
                received.append(head + b"\r\n\r\n" + body)
                connection.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", answers, received
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() would not
        listener.close()
        thread.join(5)


def answer_to_get(answering: Listener, raw: bytes) -> Answer:
    """GET / from a listener that answers raw."""
    url, answers, _ = answering
    answers.append(raw)
    return exchange(url, "GET", "/", {}, None, 5)


def test_a_request_says_method_path_host_and_closes_with_its_body_length(
    answering: Listener,
) -> None:
    url, answers, received = answering
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    exchange(url, "POST", "/a?b=c", {"Authorization": "Bearer t"}, b'{"x":1}', 5)

    assert received == [
        f"POST /a?b=c HTTP/1.1\r\nHost: {url[7:]}\r\nConnection: close\r\n"
        "Accept-Encoding: identity\r\nAuthorization: Bearer t\r\nContent-Length: 7\r\n\r\n"
        '{"x":1}'.encode()
    ]


def test_an_answer_of_content_length_stops_there_and_keeps_status_reason_and_type(
    answering: Listener,
) -> None:
    answer = answer_to_get(answering, b"HTTP/1.1 404 Not Found\r\nContent-Type: Application/"
                           b"JSON; charset=utf-8\r\ncontent-length: 4\r\n\r\n{}  ignored")

    assert (answer.status, answer.reason, answer.content_type, answer.body) == (
        404, "Not Found", "application/json", b"{}  "
    )


def test_a_chunked_answer_is_put_together(answering: Listener) -> None:
    answer = answer_to_get(answering, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"4\r\n{\"a\"\r\na;ext=1\r\n: 1234567}\r\n0\r\n\r\n")

    assert answer.body == b'{"a": 1234567}'


def test_an_answer_without_length_is_read_to_the_end_and_typeless_is_text_plain(
    answering: Listener,
) -> None:
    answer = answer_to_get(answering, b"HTTP/1.0 200 OK\r\nContent-Type: nonsense\r\n\r\nall of it")

    assert (answer.content_type, answer.body) == ("text/plain", b"all of it")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "SSH-2.0-OpenSSH_9.2"),
        (b"", "it closed the connection, no answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "the answer ended after 5 of 10"),
    ],
)
def test_what_is_not_a_whole_http_answer_is_one_line(
    answering: Listener, answer: bytes, message: str
) -> None:
    with pytest.raises(NotHTTP, match=f"^{message}"):
        answer_to_get(answering, answer)


def test_a_line_break_in_a_header_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="line break"):
        exchange("http://127.0.0.1:9", "GET", "/", {"Authorization": "x\r\nEvil: 1"}, None, 5)


def test_cut_or_malformed_chunks_are_refused() -> None:
    for data in (b"5\r\nabc", b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n"):
        with pytest.raises(NotHTTP):
            dechunk(data)


def test_split_url_takes_host_and_port_and_refuses_other_schemes() -> None:
    assert split_url("http://127.0.0.1:8008") == ("127.0.0.1", 8008)
    assert split_url("http://[::1]:8008/") == ("::1", 8008)
    assert split_url("http://localhost") == ("localhost", 80)
    with pytest.raises(ValueError):
        split_url("https://127.0.0.1:8008")
