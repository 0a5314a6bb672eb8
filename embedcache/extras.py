"""The optional features and the extras that install them.

An import that needs an extra runs inside :func:`requires`, so a missing package reads as
the feature it belongs to and the command that installs it, not as a bare ImportError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import MissingDependencyError

__all__ = ["EXTRAS", "requires"]

#: Each extra of ``pyproject.toml`` that a feature needs, and that feature, for messages.
EXTRAS = {
    "langchain": "embedcache.langchain",
    "llama-index": "embedcache.llama_index",
    "milvus": "embedcache demo --milvus",
    "parquet": "Parquet export",
    "redis": "a shared Redis tier",
    "serve": "embedcache serve",
}


@contextlib.contextmanager
def requires(extra: str) -> Iterator[None]:
    """Turn an ``ImportError`` of a third-party module raised in the block into a
    :class:`~embedcache.errors.MissingDependencyError` naming ``extra``.

    >>> try:
    ...     with requires("parquet"):
    ...         import no_such_module
    ... except ImportError as exc:  # a MissingDependencyError is one
    ...     print(f"{type(exc).__name__}: extra {exc.extra!r}, module {exc.name!r}")
    MissingDependencyError: extra 'parquet', module 'no_such_module'
    """
    feature = EXTRAS[extra]
    try:
        yield
    except MissingDependencyError:
        raise
    except ImportError as exc:
        missing = exc.name or ""
        if missing == "embedcache" or missing.startswith("embedcache."):
            raise  # one of our own modules failed to import: a bug, not a missing extra
        raise MissingDependencyError(
            f"{feature} needs the {extra} extra ({missing or exc} is missing): "
            f"pip install 'embedcache[{extra}]'",
            extra=extra,
            name=missing or None,
        ) from exc
