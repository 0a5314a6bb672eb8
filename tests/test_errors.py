"""Which error each kind of failure raises: bad arguments, missing optional dependencies."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from embedcache import (
    InvalidInputError,
    JinaClient,
    MissingDependencyError,
    RequestOptions,
    Store,
    open_shared,
)
from embedcache.cache_keys import fingerprint, text_keys
from embedcache.cli import main
from embedcache.extras import EXTRAS, requires

from .cli_helpers import one_line_error


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


# Missing optional dependencies: each feature names its extra and the install command.


def _missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as it does when the package is not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def _check(error: MissingDependencyError, extra: str, module: str) -> None:
    assert error.extra == extra
    assert error.name == module
    assert f"needs the {extra} extra ({module} is missing)" in str(error)
    assert str(error).endswith(f"pip install 'embedcache[{extra}]'")
    assert "\n" not in str(error)


def test_a_redis_tier_without_redis_names_the_redis_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _missing(monkeypatch, "redis", "redis.backoff", "redis.retry")
    with pytest.raises(MissingDependencyError) as caught:
        open_shared("redis://127.0.0.1:1/0")
    _check(caught.value, "redis", "redis")
    assert str(caught.value).startswith("a shared Redis tier needs")
    assert open_shared(None) is None  # no URL: redis is never imported


def test_parquet_export_without_pyarrow_fails_before_writing(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path, tmp_path: Path
) -> None:
    from embedcache.maintenance.exporting import export
    from embedcache.maintenance.inventory import Filters

    fp = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage"))
    with Store(cache_dir) as store:
        store.put_many(fp, [(text_keys(fp, ["a"])[0], np.ones(8, np.float32), 1.0)])
        _missing(monkeypatch, "pyarrow", "pyarrow.parquet")
        with pytest.raises(MissingDependencyError) as caught:
            export(store, Filters(), tmp_path / "out", parquet=True)
    _check(caught.value, "parquet", "pyarrow")
    assert list(tmp_path.glob("out.*")) == []


def test_serve_without_the_serve_extra_is_aone_line_error(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    _missing(monkeypatch, "httptools")
    # A module that imported httptools earlier in the session would not import it again.
    for module in [name for name in sys.modules if name.startswith("embedcache.proxy")]:
        monkeypatch.delitem(sys.modules, module)
    result = CliRunner().invoke(main, ["--cache-dir", str(cache_dir), "serve", "--port", "0"])
    assert one_line_error(result) == (
        "Error: MissingDependencyError: embedcache serve needs the serve extra (httptools is "
        "missing): pip install 'embedcache[serve]'"
    )


def test_cli_redis_url_without_redis_is_aone_line_error(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    _missing(monkeypatch, "redis", "redis.backoff", "redis.retry")
    Store(cache_dir).close()  # stats reads only an existing cache
    args = ["--cache-dir", str(cache_dir), "--redis-url", "redis://127.0.0.1:1/0", "stats"]
    line = one_line_error(CliRunner().invoke(main, args))
    assert line.endswith("pip install 'embedcache[redis]'")


def test_an_import_error_of_our_own_module_is_not_blamed_on_an_extra() -> None:
    with pytest.raises(ImportError) as caught, requires("serve"):
        import embedcache.no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(caught.value, MissingDependencyError)


def test_every_extra_named_in_messages_exists_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    assert set(EXTRAS) <= set(declared["optional-dependencies"])
