"""Measured child processes: each one's own peak RSS (``ru_maxrss`` from ``wait4``), and the
bundled emulator in a process of its own (for ``bench/large_cache.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["RSS", "Emulator", "reap_hook"]

#: Peak RSS (MB) of each child reaped since :func:`reap_hook`, by pid.
RSS: dict[int, float] = {}


def reap_hook() -> None:
    """Record each child's own ru_maxrss: wait4 on it before subprocess does."""
    original = subprocess.Popen._try_wait  # type: ignore[attr-defined]

    def try_wait(self: subprocess.Popen[bytes], wait_flags: int) -> tuple[int, int]:
        try:
            pid, status, usage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return original(self, wait_flags)  # type: ignore[no-any-return]
        if pid:
            RSS[pid] = usage.ru_maxrss / 1024
        return pid, status

    subprocess.Popen._try_wait = try_wait  # type: ignore[attr-defined]


class Emulator:
    """The bundled emulator (``python -m embedcache.testing``) in its own process, for the
    writer's misses."""

    def __init__(self, key: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "embedcache.testing", "--api-key", key],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )  # fmt: skip
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the emulator did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
