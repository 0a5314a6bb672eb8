"""A proxy safe to share: what one client may ask of it. Access decided at the headers,
key verification bounded, request limits, big bodies off the event loop, removals by other
processes followed, no URL credentials shown. ``embedcache serve`` on loopback, the
emulator upstream: in this process, or as a subprocess of two workers where several are the
point."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from embedcache.assembly import CacheSettings
from embedcache.models import resolve_options
from embedcache.proxy.app import Proxy, ProxySettings
from embedcache.proxy.hits import HIT_BODY_BYTES
from embedcache.proxy.http import Request
from embedcache.proxy.rendered import variant
from embedcache.testing import JinaEmulator

from .bare_server import closed_by_server
from .conftest import API_KEY, MakeProxy, MakeServed, damage_entry, wait_for
from .serving import Served
from .test_proxy_hits import samples

V3 = "jina-embeddings-v3"
BODY = {"model": V3, "input": ["a shared document"]}
DEADLINE = 20.0


def post(proxy: Served, body: dict[str, Any], key: str | None = API_KEY) -> httpx.Response:
    """One request on a new connection (so the kernel may give it to any worker)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        return http.post("/v1/embeddings", json=body, headers=headers)


def port_of(proxy: Served) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def head(path: str, length: int, key: str | None = None) -> bytes:
    """A POST's request line and headers, for a raw socket."""
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json"]
    lines.append(f"content-length: {length}")
    if key is not None:
        lines.append(f"authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response from a raw socket: status, headers (lower-cased) and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-answer: {data!r}")
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed mid-body")
        body += chunk
    return int(status_line.split()[1]), headers, body


def _queues(port: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Every loopback TCP connection of ``port``'s side or the other, by (local port,
    remote port): its bytes (unsent, unread). Linux's /proc/net/tcp."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        local_port, remote_port = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if port in (local_port, remote_port):
            unsent, unread = (int(value, 16) for value in queues.split(":"))
            found[(local_port, remote_port)] = (unsent, unread)
    return found


def read_by_server(port: int, *clients: socket.socket) -> bool:
    """Whether the server on ``port`` has read every byte ``clients`` sent (nothing waits
    in the client's send queue or in the server's receive queue)."""
    queues = _queues(port)
    for client in clients:
        mine = client.getsockname()[1]
        if queues.get((mine, port), (1, 0))[0] or queues.get((port, mine), (0, 1))[1]:
            return False
    return True


linux_only = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads socket queues from /proc/net/tcp"
)


# Access decided at the headers


def test_with_a_token_a_request_without_credentials_is_refused_before_its_body_is_read(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--token", "proxy-token")
    total = 32 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=DEADLINE) as sock:
        sock.sendall(head("/v1/embeddings", total) + b"[" * 65536)  # 64 KiB of 32 MiB sent
        status, _, body = read_response(sock)  # arrives while the client is still "sending"
        assert status == 401
        answer = json.loads(body)
        assert "token" in answer["detail"]
        assert answer["error"]["message"] == answer["detail"]
        # And the connection is closed, the rest unread: a FIN, or a reset when the server
        # closed with the client's bytes still unread in its socket (which one is timing).
        assert closed_by_server(sock)
    assert emulator.requests == []


def test_a_refusal_at_the_headers_reads_as_jinas_detail_and_openais_error_message(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--token", "proxy-token")
    refused = post(proxy, BODY, key=None)
    assert refused.status_code == 401
    assert "token" in refused.json()["detail"]  # Jina's clients
    assert refused.json()["error"]["type"] == "authentication_error"
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="wrong", max_retries=0)
    with sdk, pytest.raises(openai.AuthenticationError) as caught:
        sdk.embeddings.create(model=V3, input=["a shared document"])
    assert "token" in caught.value.message
    tei = proxy.http.post("/embed", json={"inputs": ["a shared document"]})
    assert tei.status_code == 401
    assert tei.json()["error_type"] == "validation"  # TEI's own shape on TEI's path
    assert "token" in tei.json()["error"]
    assert emulator.requests == []


# Key verification, bounded


def test_verifications_of_random_keys_are_bounded_by_the_rate_and_the_rest_get_429(
    emulator: JinaEmulator, make_served: MakeServed
) -> None:
    rate, workers = 0.01, 2
    proxy = make_served("--verify-keys", "--verify-rate", str(rate), "--workers", str(workers))
    started = time.monotonic()
    answers = [post(proxy, BODY, key="jina_" + secrets.token_hex(30)) for _ in range(100)]
    elapsed = time.monotonic() - started
    # Each worker starts one verification at once, then one per 1/rate seconds.
    most = int(workers * (1 + rate * elapsed))
    assert len(emulator.requests) <= most
    limited = [answer for answer in answers if answer.status_code == 429]
    assert len(limited) >= 100 - most
    assert all(int(answer.headers["Retry-After"]) >= 1 for answer in limited)
    assert "--verify-rate" in limited[0].json()["detail"]
    assert {answer.status_code for answer in answers} <= {401, 429}


@linux_only
def test_one_new_key_asked_twenty_times_at_once_is_verified_once(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--verify-keys", "--workers", "1")
    port = port_of(proxy)
    content = json.dumps(BODY).encode()
    request = head("/v1/embeddings", len(content), key=API_KEY) + content
    with emulator.hold() as gate:  # the first verification waits upstream
        socks = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)]
        socks[0].sendall(request)
        assert gate.arrived(1)
        for _ in range(19):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
            socks[-1].sendall(request)
        wait_for(lambda: read_by_server(port, *socks), "the proxy did not read the requests")
    try:
        statuses = [read_response(sock)[0] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [200] * 20
    probes = [entry for entry in emulator.requests if entry.body and entry.body["input"] == ["a"]]
    assert len(probes) == 1


# Request limits, in the client's dialect


@pytest.fixture
def limited(make_proxy: MakeProxy) -> Served:
    return make_proxy("--max-inputs", "3", "--max-answer", "64KiB")


def test_more_inputs_than_max_inputs_is_a_413_naming_the_option_in_each_dialect(
    emulator: JinaEmulator, limited: Served
) -> None:
    texts = ["one", "two", "three", "four"]
    jina = limited.embed({"model": V3, "input": texts, "dimensions": 8}, API_KEY)
    assert jina.status_code == 413
    assert "--max-inputs" in jina.json()["detail"]
    assert "at most 3" in jina.json()["detail"]
    sdk = openai.OpenAI(base_url=limited.url + "/v1", api_key=API_KEY, max_retries=0)
    with sdk, pytest.raises(openai.APIStatusError) as caught:
        sdk.embeddings.create(model=V3, input=texts, dimensions=8)
    assert caught.value.status_code == 413
    assert "--max-inputs" in caught.value.message
    tei = limited.http.post(
        "/embed", json={"inputs": texts}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert tei.status_code == 413
    assert tei.json()["error_type"] == "validation"
    assert "--max-inputs" in tei.json()["error"]
    assert emulator.requests == []


def test_an_all_hit_request_over_max_inputs_is_refused_not_served_from_memory(
    emulator: JinaEmulator, limited: Served
) -> None:
    body = {"model": V3, "input": ["one", "two", "three"], "dimensions": 8}
    assert limited.embed(body, API_KEY).status_code == 200
    assert limited.embed(body, API_KEY).headers["X-Embedcache-Cached"] == "3"
    repeated = limited.embed({**body, "input": ["one", "two", "three", "one"]}, API_KEY)
    assert repeated.status_code == 413
    assert "--max-inputs" in repeated.json()["detail"]


def test_an_answer_estimated_over_max_answer_is_a_413_naming_the_option(
    emulator: JinaEmulator, limited: Served
) -> None:
    texts = ["one", "two", "three"]
    big = limited.embed({"model": V3, "input": texts}, API_KEY)  # 3 x 1024 floats as text
    assert big.status_code == 413
    assert "--max-answer" in big.json()["detail"]
    assert emulator.requests == []
    small = limited.embed({"model": V3, "input": texts, "embedding_type": "base64"}, API_KEY)
    assert small.status_code == 200  # the same vectors in base64 fit
    tei = limited.http.post(
        "/embed", json={"inputs": texts}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert tei.status_code == 413
    assert "--max-answer" in tei.json()["error"]


def test_a_hundred_thousand_distinct_texts_are_refused_by_default_before_any_work(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy()
    texts = [f"text number {i}" for i in range(100_000)]
    refused = proxy.embed({"model": V3, "input": texts}, API_KEY)
    assert refused.status_code == 413
    assert "at most 2048" in refused.json()["detail"]
    assert emulator.requests == []


# Big bodies off the event loop


def test_a_50mb_text_does_not_stall_hits_on_the_same_worker(
    emulator: JinaEmulator, make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The big body's parse is held open until the hit has been answered, so the order is
    # decided by the test, not by which thread the scheduler runs first: were the body
    # parsed on the event loop, the loop would be stuck in the held parse and the hit
    # could not be answered at all.
    proxy = make_proxy()
    assert proxy.embed(BODY, API_KEY).status_code == 200  # now a hit in memory
    parsing, release = threading.Event(), threading.Event()
    real_loads = orjson.loads

    def held_loads(data: bytes | str) -> Any:
        if len(data) > 1_000_000:
            parsing.set()
            release.wait(DEADLINE * 3)
        return real_loads(data)

    monkeypatch.setattr(orjson, "loads", held_loads)
    content = json.dumps({"model": V3, "input": ["word " * 10_000_000]}).encode()
    answered: list[int] = []
    big = socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=DEADLINE * 3)

    def send_big() -> None:
        big.sendall(head("/v1/embeddings", len(content), key=API_KEY) + content)
        answered.append(read_response(big)[0])

    sender = threading.Thread(target=send_big)
    sender.start()
    try:
        assert parsing.wait(DEADLINE * 3), "the big body was never parsed"
        hit = post(proxy, BODY)  # times out, and fails, if the loop is the one held
        assert hit.headers["X-Embedcache-Cached"] == "1"
        assert answered == []  # the big request is still in its parse
    finally:
        release.set()
        sender.join(DEADLINE * 3)
        big.close()
    assert answered == [422]


def test_a_big_body_is_parsed_in_a_fill_thread_never_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Proxy(ProxySettings(cache=CacheSettings(cache_dir=tmp_path / "cache", offline=True)))
    parsed_on: list[threading.Thread] = []
    real_loads = orjson.loads

    def loads(data: bytes | str) -> Any:
        if len(data) > 100_000:
            parsed_on.append(threading.current_thread())
        return real_loads(data)

    monkeypatch.setattr(orjson, "loads", loads)
    body = json.dumps({"model": V3, "input": ["word " * 100_000]}).encode()
    try:
        assert proxy.answer_hit(Request(b"POST", b"/v1/embeddings", body)) is None
        assert parsed_on == []  # the hit path does not even look at it

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=proxy.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
                return await http.post("/v1/embeddings", content=body)

        answer = asyncio.run(send())
    finally:
        proxy.close()
    assert answer.status_code == 422
    assert "8192-token limit" in answer.json()["detail"]
    assert parsed_on
    assert threading.main_thread() not in parsed_on  # the event loop's thread


# What another process removes


def run_cli(cache_dir: Path, *args: str) -> None:
    command = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir), *args]
    subprocess.run(command, check=False, capture_output=True, timeout=120)


@pytest.mark.parametrize("command", ["clear", "prune", "verify --repair"])
def test_entries_removed_by_another_process_stop_being_served(
    emulator: JinaEmulator, make_served: MakeServed, cache_dir: Path, command: str
) -> None:
    proxy = make_served()

    def held() -> list[float]:
        return list(samples(proxy, "rendered_bytes").values())

    def every_worker_holds_it() -> bool:
        assert post(proxy, BODY).status_code == 200
        return len(held()) == 2 and min(held()) > 0

    wait_for(every_worker_holds_it, lambda: f"rendered: {held()}", limit=DEADLINE)
    fetched = len(emulator.requests)
    if command == "clear":
        run_cli(cache_dir, "clear", "--yes")
    elif command == "prune":
        run_cli(cache_dir, "prune", "--model", V3, "--yes")
    else:
        damage_entry(cache_dir)
        run_cli(cache_dir, "verify", "--repair")
    # Every worker lets go of what it held, unasked (no admin token, no request).
    wait_for(lambda: max(held()) == 0, lambda: f"still held after {command}: {held()}", DEADLINE)
    assert post(proxy, BODY).headers["X-Embedcache-Cached"] == "0"
    assert len(emulator.requests) == fetched + 1


def test_a_change_in_the_stores_removals_empties_what_the_worker_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Proxy(ProxySettings(cache=CacheSettings(cache_dir=tmp_path / "cache", offline=True)))
    try:
        proxy.rendered.put([b"k" * 16], b"d", [b"[0.5]"], [1.0])
        proxy.follow_removals()
        assert len(proxy.rendered) == 1  # nothing removed: kept
        monkeypatch.setattr(proxy.store, "removals", lambda: 1)
        proxy.follow_removals()
        assert len(proxy.rendered) == 0
    finally:
        proxy.close()


# No credentials shown


def test_the_upstreams_credentials_appear_in_no_answer_or_log_line(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy("--log-level", "info", upstream="http://user:SECRETPW@127.0.0.1:1")
    failed = post(proxy, {"model": V3, "input": ["never fetched"]})
    assert failed.status_code == 502
    assert "SECRETPW" not in failed.text
    banner = "embedcache proxy: http://"  # the serve command's own line, not the proxy's
    shown = [line for line in proxy.output().splitlines() if not line.startswith(banner)]
    assert not any("SECRETPW" in line for line in shown)


# The hit path's access-log fields


def test_the_hit_path_gives_the_access_log_its_texts_and_hits(tmp_path: Path) -> None:
    proxy = Proxy(ProxySettings(cache=CacheSettings(cache_dir=tmp_path / "cache", offline=True)))
    try:
        body = json.dumps({"model": V3, "input": ["a", "b", "a"]}).encode()
        keys = proxy.embedder.keys(["a", "b"], resolve_options(V3))
        kind = variant("float", proxy.float_style)
        proxy.rendered.put(keys, kind, [b"[0.5]", b"[0.25]"], [1.0, 1.0])
        request = Request(b"POST", b"/v1/embeddings", body)
        assert proxy.answer_hit(request) is not None
        assert (request.texts, request.hits) == (3, 2)
        padding = b" " * HIT_BODY_BYTES
        big = Request(b"POST", b"/v1/embeddings", body + padding)  # left to the app
        assert proxy.answer_hit(big) is None
    finally:
        proxy.close()
