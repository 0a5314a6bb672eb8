"""A local emulator of the Jina embeddings HTTP API, for tests, demos and benchmarks.

>>> from embedcache.testing import Fault, JinaEmulator
>>> with JinaEmulator(api_key="jina_test") as emu:  # doctest: +SKIP
...     emu.inject(Fault(status=429, retry_after="1"))
...     ...  # point a client at emu.url
>>> limits = RateLimits(rpm=2, tpm=1000, concurrent_requests=1, window=0.5)
>>> with JinaEmulator(rate_limits=limits) as emu:  # doctest: +SKIP
...     ...  # the third request within half a second gets a 429
>>> with JinaEmulator() as emu, emu.hold(times=2) as gate:  # doctest: +SKIP
...     ...  # start two requests in threads
...     assert gate.arrived(2)  # both in flight now, however fast the machine

Run one in the foreground with ``python -m embedcache.testing --port 8080``.
"""

from __future__ import annotations

from .emulator import JinaEmulator
from .faults import Fault, Gate, RecordedRequest
from .limits import RateLimits

__all__ = ["Fault", "Gate", "JinaEmulator", "RateLimits", "RecordedRequest"]
