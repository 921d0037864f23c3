"""Hostile input against a real server: never a 500, never a traceback in the
log, never a stream opened for input the app would refuse.

hypothesis draws query strings, ``Last-Event-ID`` values, JSON payloads of
every shape and size, methods and headers, and sends them over raw sockets
to gunicorn -k gevent serving the ``/fuzz`` blueprint (a validated payload
``{"title": <1 to 50 characters>}``, an identity from ``X-User``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .support import HOST, Server, running_server

EXAMPLES = 200  # per test: bounded, a few seconds each


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server("gunicorn-gevent", tmp_path_factory.mktemp("fuzz")) as server:
        yield server


def valid(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and set(payload) == {"title"}
        and isinstance(payload["title"], str)
        and 1 <= len(payload["title"]) <= 50
    )


def send(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send one raw request; return the status, headers and (bounded) body."""
    with socket.create_connection((HOST, port), 5) as sock:
        sock.settimeout(5)
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        stream = headers.get("content-type", "").startswith("text/event-stream")
        # A stream ends after its job (the fuzz render ends at once);
        # anything else when the server closes (Connection: close).
        while not (stream and (b"event: complete" in rest or b"event: error" in rest)):
            more = sock.recv(65536)
            if not more:
                break
            rest += more
        if "chunked" in headers.get("transfer-encoding", "") and not stream:
            rest = dechunk(rest)
        return status, headers, rest


def dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body


def request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def check(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status != 0, "no HTTP answer"
    assert status < 500 or status == 503, (status, body[:300])
    assert b"Traceback" not in body and b'File "' not in body, body[:300]
    if body and 400 <= status < 500 and "application/json" in headers.get("content-type", ""):
        assert set(json.loads(body)) == {"error"}


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
payloads = json_values | st.fixed_dictionaries({"title": st.text(max_size=60)})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=payloads, raw=st.one_of(st.none(), st.text(max_size=300)))
def test_query_payloads(fuzz_server: Server, payload: Any, raw: str | None) -> None:
    data = json.dumps(payload) if raw is None else raw
    status, headers, body = send(
        fuzz_server.port, request("GET", "/fuzz/render/stream?data=" + quote(data), {})
    )
    check(status, headers, body)
    opened = headers.get("content-type", "").startswith("text/event-stream")
    expected = raw is None and valid(payload)
    if status != 414:  # gunicorn's own request-line limit, before the app
        assert opened == expected, (status, data[:200], body[:200])
    if opened:
        assert b"event: complete" in body


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=payloads, junk=st.one_of(st.none(), st.binary(max_size=3000)))
def test_posted_bodies(fuzz_server: Server, payload: Any, junk: bytes | None) -> None:
    body_bytes = json.dumps(payload).encode() if junk is None else junk
    head = request("POST", "/fuzz/render", {"Content-Type": "application/json"}, body_bytes)
    status, headers, body = send(fuzz_server.port, head, body_bytes)
    check(status, headers, body)
    if junk is None and valid(payload) and len(body_bytes) <= 2048:
        assert status == 202
    elif status == 202:
        assert valid(json.loads(body_bytes))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]),
    path=st.sampled_from(["/fuzz/render", "/fuzz/render/stream", "/fuzz/render/{id}"]),
    job=st.one_of(st.text(max_size=40), st.just("0" * 32)),
    params=st.dictionaries(
        st.sampled_from(["job", "lastEventId", "data", "x"]), st.text(max_size=80), max_size=3
    ),
    last_event_id=st.one_of(st.none(), header_text),
    extra=st.dictionaries(
        st.text(st.characters(min_codepoint=0x41, max_codepoint=0x5A), min_size=1, max_size=12),
        header_text,
        max_size=4,
    ),
    user=st.one_of(st.none(), header_text),
)
def test_methods_ids_and_headers(
    fuzz_server: Server,
    method: str,
    path: str,
    job: str,
    params: dict[str, str],
    last_event_id: str | None,
    extra: dict[str, str],
    user: str | None,
) -> None:
    target = path.replace("{id}", quote(job, safe="")) + ("?" + urlencode(params) if params else "")
    headers = {
        k: v
        for k, v in extra.items()
        if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")
    }
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    if user is not None:
        headers["X-User"] = user
    status, response_headers, body = send(fuzz_server.port, request(method, target, headers))
    check(status, response_headers, body)
    if response_headers.get("content-type", "").startswith("text/event-stream") and method == "GET":
        # A stream may open only for a valid payload: nothing here names a real job.
        data = params.get("data")
        assert data is not None and not params.get("job") and last_event_id in (None, "")
        assert valid(json.loads(data))


def test_the_log_holds_no_traceback(fuzz_server: Server) -> None:
    # Runs after the fuzzers in this module (pytest keeps file order).
    log = fuzz_server.log_file("server.out").read_text("utf-8", "replace")
    assert "Traceback" not in log, log[-3000:]
