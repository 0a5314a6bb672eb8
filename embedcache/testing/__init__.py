"""A local emulator of the Jina embeddings HTTP API, for tests, demos and benchmarks.

Each one serves on a free loopback port; queue faults, or give it rate limits:

>>> import httpx
>>> from embedcache.testing import Fault, JinaEmulator, RateLimits
>>> body = {"model": "jina-embeddings-v3", "input": ["a text"]}
>>> auth = {"Authorization": "Bearer jina_test"}
>>> with JinaEmulator(api_key="jina_test") as emu:
...     emu.inject(Fault(status=429, retry_after="1"))
...     first = httpx.post(emu.url + "/v1/embeddings", json=body, headers=auth)
...     second = httpx.post(emu.url + "/v1/embeddings", json=body, headers=auth)
>>> first.status_code, first.headers["Retry-After"], second.status_code
(429, '1', 200)
>>> len(second.json()["data"][0]["embedding"])
1024
>>> with JinaEmulator(rate_limits=RateLimits(rpm=2)) as emu:  # 2 requests a minute
...     codes = [
...         httpx.post(emu.url + "/v1/embeddings", json=body, headers=auth).status_code
...         for _ in range(3)
...     ]
>>> codes
[200, 200, 429]
>>> import threading
>>> with JinaEmulator(api_key="jina_test") as emu:
...     send = lambda: httpx.post(emu.url + "/v1/embeddings", json=body, headers=auth)
...     with emu.hold(times=1) as gate:  # released when the block ends
...         caller = threading.Thread(target=send)
...         caller.start()
...         held = gate.arrived(1)  # in flight now, however fast or slow the machine
...     caller.join()
>>> held
True

Run one in the foreground with ``python -m embedcache.testing --port 8080``.
"""

from __future__ import annotations

from .emulator import JinaEmulator
from .faults import Fault, Gate, RecordedRequest
from .limits import RateLimits

__all__ = ["Fault", "Gate", "JinaEmulator", "RateLimits", "RecordedRequest"]
