"""How the upstream writes ``float`` embeddings as text: :class:`FloatStyle`, the one object
the client learns it into and whoever writes float answers (the proxy) reads it from.

Every ``float`` value the API sends is a float32 value, but the JSON text can carry it in
two styles (reference §12): ``float64``, the digits that read back as the same float64
(Python's ``json`` writing ``float(np.float32(x))``: ``0.09806419909000397``), or
``float32``, the shortest digits that read back as the same float32 (``0.0980642``). A
client that parses JSON numbers into float64 sees different numbers in the two styles, so a
cache that writes float answers must write them in its upstream's style.

Both styles are told apart by the float64 values a JSON parser makes of the text, which is
exactly what a float client sees: no need for the text itself (a longer spelling of the
same float64, ``0.0980642000``, is the same answer to every such client).

The proxy makes one :class:`FloatStyle` before its workers fork (``across_fork=True``), hands
it to its client (:meth:`~embedcache.upstream.jina.JinaClient.learn_float_style`: the first
misses are asked for as float text, then base64 again), and reads :attr:`FloatStyle.current`
for every float answer: a memory read, never the disk. What the cache directory keeps of
the style (for later servers, and other servers on the directory) is the proxy's to read
and write, off the request path (:func:`setting_name`; :meth:`FloatStyle.adopt`).
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from ..errors import ResponseFormatError

__all__ = [
    "DEFAULT_FLOAT_STYLE",
    "FLOAT_STYLES",
    "SAMPLE_VALUES",
    "FloatStyle",
    "classify_floats",
    "setting_name",
]

#: How ``float`` embeddings can be written as text: float64 round-trip digits of each
#: float32 value, or its shortest float32 digits.
FLOAT_STYLES = ("float64", "float32")
#: The style to write until the upstream's own is known: the one the reference's evidence
#: (the Milvus page's printed output) shows the API writing.
DEFAULT_FLOAT_STYLE = "float64"
#: Most values of one answer checked one by one (about a microsecond each, under the GIL):
#: a learning answer of 2048 vectors must not stall the proxy's event loop for seconds, and
#: an upstream's style shows in its first values as well as in its millionth.
SAMPLE_VALUES = 4096

_FLOAT32_MAX = float(np.finfo(np.float32).max)

log = logging.getLogger("embedcache")


def classify_floats(rows: Iterable[NDArray[np.float64]]) -> str | None:
    """The style in which an answer's float embeddings were written, from the float64
    values a JSON parser read (the first :data:`SAMPLE_VALUES` finite ones, in order);
    ``None`` when they do not tell.

    A value that is not exactly a float32 value must be the shortest float32 text of one.
    A value that is exactly a float32 value but not its shortest text shows ``float64``
    (even if others show the other style: the first rule of §12). Every value being the
    shortest float32 text, at least one of them not exactly a float32 value, shows
    ``float32``. Values both styles write alike (``0.5``, ``0.25``, ``0.0``) tell nothing.
    NaN and infinities are left out: whether a vector may hold them is the caller's call,
    as it is for base64 answers.

    :raises ResponseFormatError: a value that is neither (more digits than float32 has, or
        beyond its range): no cache of float32 vectors can give it back.
    """
    sample = _sample(rows)
    with np.errstate(over="ignore"):  # beyond float32's range: refused just below
        narrow = sample.astype(np.float32)
    exact = (narrow.astype(np.float64) == sample) & (np.abs(sample) <= _FLOAT32_MAX)
    for position in np.flatnonzero(~exact):
        if not _is_shortest(narrow[position], sample[position]):
            raise ResponseFormatError(
                f"a float embedding holds {float(sample[position])!r}, which is not a "
                "float32 value: a cache of float32 vectors cannot give it back"
            )
    for position in np.flatnonzero(exact):
        if not _is_shortest(narrow[position], sample[position]):
            return "float64"
    return "float32" if not exact.all() else None


def _sample(rows: Iterable[NDArray[np.float64]]) -> NDArray[np.float64]:
    """The first :data:`SAMPLE_VALUES` finite values of ``rows``, in order."""
    taken: list[NDArray[np.float64]] = []
    left = SAMPLE_VALUES
    for row in rows:
        finite = row[np.isfinite(row)][:left]
        taken.append(finite)
        left -= len(finite)
        if left <= 0:
            break
    return np.concatenate(taken) if taken else np.empty(0, dtype=np.float64)


def _is_shortest(narrow: np.float32, wide: np.float64) -> bool:
    """Whether ``wide`` is what a JSON parser reads from the shortest text of ``narrow``
    (numpy's ``str`` of a float32 is that text)."""
    return bool(np.isfinite(narrow)) and float(str(narrow)) == float(wide)


def setting_name(upstream: str) -> str:
    """The cache directory's setting that keeps the float style of ``upstream``: its
    :func:`~embedcache.config.upstream_id`, as the entries it answered are keyed (no
    credentials, so none reaches the disk; an upstream declared with ``--upstream-as``
    shares the style of the one it stands for)."""
    return f"float_style {upstream}"


class FloatStyle:
    """How one upstream writes ``float`` text: learned by a client (and its per-key
    children, :meth:`~embedcache.upstream.jina.JinaClient.for_key`) from its answers, read
    by whoever writes float answers.

    Learning is off until :meth:`start`; it ends when an answer tells the style
    (:meth:`learned`), or when the upstream's float text turns out not to be float32 values
    (:meth:`give_up`: asking for float text again would only fail again). Each process
    learns once for itself, so an upstream that changed its style is followed from each
    process's first miss on.

    :param across_fork: keep what is learned in anonymous shared memory too, so processes
        forked after this object is made (a server's workers) read at once what any of them
        learned.
    """

    def __init__(self, *, across_fork: bool = False) -> None:
        self._lock = threading.Lock()
        self._style: str | None = None
        self._active = False
        self._adopted: str | None = None
        # One byte, 0 until a process learns: 1 + the style's index in FLOAT_STYLES.
        self._shared: mmap.mmap | None = mmap.mmap(-1, 1) if across_fork else None

    @property
    def learned_here(self) -> str | None:
        """The style this process learned from its own answers; ``None`` until then."""
        return self._style

    @property
    def current(self) -> str:
        """``"float64"`` or ``"float32"``: the style to write ``float`` answers in now.

        What this process learned, else what another process forked from the same object
        learned, else what was :meth:`adopt`-ed (the cache directory's), else
        :data:`DEFAULT_FLOAT_STYLE`. Read for every float answer: memory only.
        """
        if self._style is not None:
            return self._style
        code = self._shared[0] if self._shared is not None else 0
        if code:
            return FLOAT_STYLES[code - 1]
        return self._adopted or DEFAULT_FLOAT_STYLE

    @property
    def known(self) -> bool:
        """Whether :attr:`current` is more than the default: learned or adopted."""
        shared = self._shared is not None and self._shared[0] != 0
        return self._style is not None or shared or self._adopted is not None

    @property
    def active(self) -> bool:
        """Whether requests should ask for float text, to learn from the answer."""
        return self._active

    def adopt(self, style: str | None) -> None:
        """Write ``style`` until this process or a sibling learns one (what the cache
        directory keeps, read by the proxy off the request path); ``None`` or a value that
        is no style is ignored."""
        if style in FLOAT_STYLES:
            self._adopted = style

    def start(self) -> None:
        """Learn from the next float answers (nothing to do once learned)."""
        with self._lock:
            self._active = self._style is None

    def learned(self, style: str) -> None:
        """An answer showed ``style``: stop asking for float text (the first of several
        concurrent answers decides)."""
        if style not in FLOAT_STYLES:
            raise ValueError(f"unknown float style {style!r}")
        with self._lock:
            if not self._active:
                return
            self._style, self._active = style, False
            if self._shared is not None:
                self._shared[0] = FLOAT_STYLES.index(style) + 1

    def give_up(self, reason: str) -> None:
        """Stop learning: the upstream's float text cannot be given back exactly."""
        with self._lock:
            if not self._active:
                return
            self._active = False
        log.warning(
            "embedcache: stopped learning how the upstream writes floats (%s); float answers "
            "keep the stored or default style",
            reason,
        )
