"""How ``embedcache serve`` runs as a server: one server per port, its logs and access
lines, its options, shutdown, and its open-file limit. Real subprocesses on loopback, but
where a test reads only what the server writes (in this process)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from embedcache.cli.main import main
from embedcache.config import ENVIRONMENT
from embedcache.proxy.accesslog import key_hash
from embedcache.proxy.server import _LoopErrors
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, MakeProxy, MakeServed, wait_for
from .serving import ProxyProcess

V3 = "jina-embeddings-v3"
KEY_HASH = hashlib.sha256(API_KEY.encode()).hexdigest()[:8]
# An access line, as written to stderr at info or to an --access-log file.
ACCESS = re.compile(
    r"embedcache worker (?P<worker>\d+) \(pid \d+\): (?P<client>\S+) "
    r'"(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}) '
    r"texts=(?P<texts>-|\d+) hits=(?P<hits>-|\d+) ms=\d+\.\d\d key=(?P<key>-|[0-9a-f]{8})$"
)
# How the server says a worker's connection cap was reached.
CAP_REACHED = re.compile(r"open connections, the most this worker takes")


def access_lines(text: str) -> list[re.Match[str]]:
    return [found for line in text.splitlines() if (found := ACCESS.search(line))]


def second_serve(emulator: JinaEmulator, cache_dir: Path, port: int, workers: int) -> str:
    """Start another ``embedcache serve`` on ``port``; its output once it has exited
    (killed, and the test failed, if it is still running after a minute)."""
    environ = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    command = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir), "serve"]
    command += ["--port", str(port), "--workers", str(workers), "--upstream", emulator.url]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environ, text=True
    )
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"a second serve on a busy port kept running:\n{output}")
    assert process.returncode == 1, output
    return output


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_serve_on_a_busy_port_fails_at_once_naming_it_and_the_first_keeps_serving(
    workers: int, emulator: JinaEmulator, make_served: MakeServed, tmp_path: Path
) -> None:
    first = make_served()
    port = int(first.url.rpartition(":")[2])
    output = second_serve(emulator, tmp_path / "other-cache", port, workers)
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"127.0.0.1:{port} is already in use" in lines[0]
    assert "--port" in lines[0]
    # Every new connection still reaches the first server (none went to a second one).
    for _ in range(20):
        with httpx.Client(base_url=first.url, timeout=30) as client:
            assert client.get("/health").status_code == 200
    assert first.process.poll() is None


def test_info_level_logs_one_access_line_per_request_with_a_hash_of_the_key_never_the_key(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy("--log-level", "info")
    body = {"model": V3, "input": ["logged once", "logged twice"]}
    for _ in range(3):
        assert proxy.embed(body, API_KEY).status_code == 200
    assert proxy.http.get("/nowhere").status_code == 404

    def lines(path: str) -> list[re.Match[str]]:
        return [line for line in access_lines(proxy.output()) if line["path"] == path]

    def embeds() -> list[re.Match[str]]:
        return lines("/v1/embeddings")

    def logged() -> bool:
        # A line is written once its answer is sent: the last one may still be on its way.
        return len(embeds()) == 3 and len(lines("/nowhere")) == 1

    wait_for(logged, lambda: f"not 4 access lines:\n{proxy.output()}")
    for line in embeds():
        assert line["method"] == "POST"
        assert line["status"] == "200"
        assert line["key"] == KEY_HASH
        assert line["client"].startswith("127.0.0.1:")
    assert [(line["status"], line["key"]) for line in lines("/nowhere")] == [("404", "-")]
    assert API_KEY not in proxy.output()


def test_warning_level_logs_no_access_lines(make_served: MakeServed) -> None:
    proxy = make_served()
    assert proxy.embed({"model": V3, "input": ["quiet"]}, API_KEY).status_code == 200
    assert proxy.stop() == -signal.SIGTERM
    assert access_lines(proxy.output()) == []


def test_access_log_file_gets_whole_lines_from_both_workers_whatever_the_level(
    make_served: MakeServed, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    proxy = make_served("--workers", "2", "--access-log", str(path))
    assert proxy.embed({"model": V3, "input": ["in the file"]}, API_KEY).status_code == 200

    def workers_seen() -> set[str]:
        # A new connection each time: the workers take turns accepting from the one socket.
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            client.get("/health", headers={"Authorization": f"Bearer {API_KEY}"})
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        return {line["worker"] for line in access_lines(text)}

    wait_for(lambda: workers_seen() == {"0", "1"}, "access lines from one worker only", 60)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert all(ACCESS.search(line) for line in text.splitlines()), text
    assert API_KEY not in text
    assert KEY_HASH in text
    assert access_lines(proxy.output()) == []  # the file, not stderr too


def test_sigterm_closes_a_connection_holding_half_a_body_after_the_drain_timeout(
    make_served: MakeServed,
) -> None:
    # Deadlines far beyond the test's, so only the drain can end the connection.
    proxy = make_served(
        "--drain-timeout", "1", "--body-timeout", "600", "--idle-timeout", "600"
    )  # fmt: skip
    host, port = "127.0.0.1", int(proxy.url.rpartition(":")[2])
    with closing(socket.create_connection((host, port), timeout=60)) as client:
        # An answered request first: a worker has accepted this connection.
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
        head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        client.sendall(head + b"content-length: 1000\r\n\r\n" + b'{"input": ["hal')
        proxy.process.send_signal(signal.SIGTERM)
        try:
            proxy.process.wait(timeout=60)  # generous: by the old code it waited 120 s
        except subprocess.TimeoutExpired:
            pytest.fail("the server still waited for the half-sent body")
        assert proxy.process.returncode == -signal.SIGTERM
        with suppress(ConnectionResetError):  # closed by the server, either way
            assert client.recv(65536) == b""


def test_upstream_credentials_are_shown_in_neither_the_banner_nor_json(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    port = emulator.url.rpartition(":")[2].rstrip("/")
    proxy = make_proxy("--json", upstream=f"http://user:PW@127.0.0.1:{port}/")
    output = proxy.output()
    assert "user:PW" not in output
    assert "PW@" not in output
    assert f"-> http://***@127.0.0.1:{port} (cache" in output
    shown = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [line["upstream"] for line in shown] == [f"http://***@127.0.0.1:{port}"]


@pytest.fixture
def idle_sockets() -> Iterator[list[socket.socket]]:
    """Sockets the test opens (closed after it), with room for 400 of them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_a_new_client_is_answered_despite_400_idle_sockets_under_a_256_file_limit(
    emulator: JinaEmulator, cache_dir: Path, idle_sockets: list[socket.socket]
) -> None:
    args = ("--workers", "1", "--idle-timeout", "600", "--header-timeout", "600")
    with ProxyProcess(emulator.url, cache_dir, *args, file_limit=256) as proxy:
        assert proxy.embed({"model": V3, "input": ["cached"]}, API_KEY).status_code == 200
        host, port = "127.0.0.1", int(proxy.url.rpartition(":")[2])
        for _ in range(400):
            idle_sockets.append(socket.create_connection((host, port), timeout=30))
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            answer = client.post(
                "/v1/embeddings",
                json={"model": V3, "input": ["cached"]},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert answer.status_code == 200
        wait_for(lambda: CAP_REACHED.search(proxy.output()), proxy.output, 20)
        assert len(CAP_REACHED.findall(proxy.output())) == 1, proxy.output()


def test_size_and_time_options_refuse_bad_values_naming_the_flag() -> None:
    runner = CliRunner()
    for args, flag, reason in [
        (["--max-body", "12x"], "--max-body", "is not a size"),
        (["--max-answer", "0"], "--max-answer", "more than 0 bytes"),
        (["--idle-timeout", "0"], "--idle-timeout", "range"),
        (["--max-body", "2MiB", "--max-body-memory", "1MiB"], "--max-body-memory", "--max-body"),
    ]:
        result = runner.invoke(main, ["serve", *args])
        assert result.exit_code == 2, result.output
        assert flag in result.output, result.output
        assert reason in result.output, result.output


def test_the_event_loops_accept_errors_are_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = _LoopErrors()
    failed = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.WARNING, logger="embedcache"):
        for _ in range(5):
            errors.handle(
                None,  # type: ignore[arg-type]
                {"message": "socket.accept() out of system resource", "exception": failed},
            )
    warned = [record for record in caplog.records if "Too many open files" in record.message]
    assert len(warned) == 1


def test_the_key_hash_is_the_start_of_the_bearer_values_sha256() -> None:
    assert key_hash(f"Bearer {API_KEY}".encode()) == KEY_HASH
    assert key_hash(f"bearer   {API_KEY} ".encode()) == KEY_HASH
    assert key_hash(b"") == "-"


def test_proxies_served_in_this_process_leave_the_embedcache_logger_as_they_found_it(
    make_proxy: MakeProxy,
) -> None:
    logger = logging.getLogger("embedcache")
    before = (logger.level, logger.propagate, list(logger.handlers))
    first = make_proxy("--log-level", "info")
    second = make_proxy()  # overlapping, stopped in the order they started
    assert logger.propagate is False  # a server's lines go to its output only
    first.stop()
    second.stop()
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
