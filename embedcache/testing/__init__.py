"""A local emulator of the Jina embeddings HTTP API, for tests, demos and benchmarks.

>>> from embedcache.testing import Fault, JinaEmulator
>>> with JinaEmulator(api_key="jina_test") as emu:  # doctest: +SKIP
...     emu.inject(Fault(status=429, retry_after="1"))
...     ...  # point a client at emu.url

Run one in the foreground with ``python -m embedcache.testing --port 8080``.
"""

from __future__ import annotations

from .emulator import JinaEmulator
from .faults import Fault, RecordedRequest

__all__ = ["Fault", "JinaEmulator", "RecordedRequest"]
