"""The API key never reaches disk, logs, repr() or error text."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from embedcache import JinaEmbeddingFunction
from embedcache.errors import EmbedcacheError
from embedcache.testing import Fault, JinaEmulator

from .conftest import API_KEY

MakeEF = Callable[..., JinaEmbeddingFunction]


def test_key_is_absent_from_cache_files_logs_and_errors(
    make_ef: MakeEF,
    emulator: JinaEmulator,
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    ef = make_ef(max_attempts=2)
    ef.encode_documents(["a", "b"])
    emulator.inject(Fault(status=503, times=5))
    try:
        ef.encode_queries(["c"])
    except EmbedcacheError as exc:
        errors += [str(exc), repr(exc)]
    emulator.inject(Fault(status=401))
    try:
        ef.encode_queries(["d"])
    except EmbedcacheError as exc:
        errors += [str(exc), repr(exc)]
    texts = [repr(ef), caplog.text, *capsys.readouterr(), *errors, repr(emulator.requests)]
    assert len(errors) == 4
    assert all(API_KEY not in text for text in texts)
    needle = API_KEY.encode()
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert files
    assert all(needle not in p.read_bytes() for p in files)
