"""``python -m embedcache.testing`` run as a process, for the tests of its flags."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx

from .conftest import API_KEY


def post_to_module(flags: list[str], body: dict[str, Any]) -> httpx.Response:
    """Start the emulator module with ``flags``, POST ``body`` to its ``/v1/embeddings``
    with the suite's key, and stop it."""
    command = [sys.executable, "-m", "embedcache.testing", *flags]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            answer = client.post(url + "/v1/embeddings", json=body)
        process.terminate()
        process.communicate(timeout=10)
    return answer
