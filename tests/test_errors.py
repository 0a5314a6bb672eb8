"""Which error each kind of failure raises: bad arguments, missing optional dependencies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from embedcache import InvalidInputError, JinaClient, Store


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
        ({"timeout": float("nan")}, "timeout must be a positive number of seconds, got nan"),
        ({"backoff_base": -1}, "backoff_base must not be negative, got -1"),
        ({"backoff_cap": -0.5}, "backoff_cap must not be negative, got -0.5"),
    ],
)
def test_bad_client_arguments_are_invalid_input(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^{re.escape(message)}$"):
        JinaClient("k", **kwargs)


def test_a_negative_size_limit_is_invalid_input_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"^size_limit must be 0 .* got -1$"):
        Store(tmp_path / "cache", size_limit=-1)
    assert not (tmp_path / "cache").exists()


def test_invalid_input_is_still_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        JinaClient("k", max_attempts=0)
