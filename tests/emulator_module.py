"""``python -m embedcache.testing`` run as a process, for the tests of its flags."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx

from .conftest import API_KEY


@contextlib.contextmanager
def running_module(flags: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The emulator module started with ``flags``, and its URL (the first line it prints);
    stopped on exit unless the test stopped it."""
    command = [sys.executable, "-m", "embedcache.testing", *flags]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        try:
            yield process, url
        finally:
            if process.returncode is None:
                process.terminate()
                process.communicate(timeout=10)


def post_to_module(flags: list[str], body: dict[str, Any]) -> httpx.Response:
    """Start the emulator module with ``flags``, POST ``body`` to its ``/v1/embeddings``
    with the suite's key, and stop it."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with running_module(flags) as (_, url), httpx.Client(headers=headers) as client:
        return client.post(url + "/v1/embeddings", json=body)
