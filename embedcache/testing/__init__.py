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

Images and PDFs are seeded by their bytes (base64 decoded, or fetched from a loopback URL),
and charged by their tiles; :func:`png` and :func:`pdf` make small valid ones for tests:

>>> import base64
>>> from embedcache.testing import png
>>> image = png(1024, 512, seed=3)  # 2 x 1 tiles of 512 px on jina-clip-v2
>>> with JinaEmulator() as emu:
...     answer = httpx.post(
...         emu.url + "/v1/embeddings",
...         json={"model": "jina-clip-v2", "input": [{"image": base64.b64encode(image).decode()}]},
...         headers=auth,
...     ).json()
...     expected = emu.expected_embedding(image, model="jina-clip-v2")
>>> answer["usage"]
{'total_tokens': 8000, 'prompt_tokens': 8000, 'image_tokens': 8000}
>>> answer["data"][0]["embedding"] == expected.astype(float).tolist()
True

Run one in the foreground with ``python -m embedcache.testing --port 8080``.
"""

from __future__ import annotations

from .emulator import JinaEmulator
from .faults import Fault, Fetched, Gate, RecordedRequest
from .images import image_size, image_tokens, png
from .limits import RateLimits
from .pdfs import pdf

__all__ = [
    "Fault",
    "Fetched",
    "Gate",
    "JinaEmulator",
    "RateLimits",
    "RecordedRequest",
    "image_size",
    "image_tokens",
    "pdf",
    "png",
]
