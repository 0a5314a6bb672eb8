"""What one ``embedcache export`` can hold, and the words for it: every entry of one export
is of one *kind* (its rows' dtype, and one row an entry or several) and one width, so its
``.npy`` is one array.

Pure and free of numpy, so the CLI can offer :data:`KINDS` as ``--kind``'s choices without
loading it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["KINDS", "ExportKind", "differ_message"]


@dataclass(frozen=True)
class ExportKind:
    """One kind of exported entry.

    :ivar descr: the ``.npy`` dtype of its rows, as stored (numpy's ``descr``).
    :ivar multi: several rows an entry (multi-vector: one per token), stacked in the ``.npy``
        with each entry's first row and row count in its metadata; else one row an entry.
    :ivar label: how an error names ``{d}`` of its dimensions (bits for packed bits).
    """

    descr: str
    multi: bool
    label: str


#: ``--kind``'s words, in the order they are offered: the words `ls` and `stats` show an
#: entry's output in (:attr:`~embedcache.cache_keys.Fingerprint.output`), the API's own
#: (``embedding_type`` binary/ubinary, ``return_multivector``/ColBERT's multi-vector).
KINDS: dict[str, ExportKind] = {
    "float": ExportKind("<f4", False, "{d}-d vectors"),
    "multi-vector": ExportKind("<f4", True, "{d}-wide multi-vector"),
    "binary": ExportKind("|i1", False, "{d}-bit binary"),
    "ubinary": ExportKind("|u1", False, "{d}-bit ubinary"),
    "multi-vector-binary": ExportKind("|i1", True, "{d}-bit multi-vector binary"),
    "multi-vector-ubinary": ExportKind("|u1", True, "{d}-bit multi-vector ubinary"),
    # A reranker's score of a (query, document): one float64 an entry, as the API wrote it.
    "score": ExportKind("<f8", False, "rerank scores"),
}


def differ_message(groups: Mapping[tuple[str, int], int]) -> str:
    """The one-line refusal of an export whose entries are of several ``(kind,
    dimensions)`` ``groups`` (each with its count), naming the flags that pick one."""
    order = list(KINDS)
    ranked = sorted(groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1]))
    kinds = list(dict.fromkeys(kind for (kind, _), _ in ranked))
    if len(kinds) == 1:  # as export always said it when vectors alone could differ
        found = ", ".join(f"{d}-d: {n:,}" for (_, d), n in ranked)
        return f"entries differ in dimension ({found}); add --dimensions"
    found = ", ".join(f"{KINDS[kind].label.format(d=d)}: {n:,}" for (kind, d), n in ranked)
    several = len(groups) > len(kinds)  # some kind in more than one width, too
    return (
        f"entries differ in kind{' and dimension' if several else ''} ({found}); "
        f"add --kind {'|'.join(kinds)}{' and --dimensions' if several else ''}"
    )
