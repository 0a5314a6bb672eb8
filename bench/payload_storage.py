"""Bytes on disk and in Redis per multi-vector token and per binary vector, against the raw
size of what the API returned (issue 26).

``python bench/payload_storage.py`` (a minute or two) writes its section of bench/RESULTS.md;
``--entries N`` sets the entries of each kind (default 100,000), ``--no-write`` prints only.

Three caches, each built with ``Store.put_payloads`` (or ``put_many`` for the reference) in
batches of 1,000 random 16-byte keys:

* multi-vector: ragged float32 entries of ``n`` 128-d rows, ``n`` uniform in 1..``--tokens``
  (jina-colbert-v2 / v4 ``return_multivector``): raw size ``n * 512`` bytes;
* binary: 1024-d packed bits, 128 uint8 each (``ubinary``): raw size 128 bytes;
* reference: today's 1024-d float32 vectors: raw size 4,096 bytes.

On disk is every file of the directory once the index's log is checkpointed into
``index.db``: segment or heap files, ``index.db``, the snapshot (``snapshot-*.npy``), the
metadata. A Redis value is the header and the bytes (keys and Redis's own overhead not
counted). Sizes, not times: nothing here depends on the machine's load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import write_section

from embedcache.cache_keys import fingerprint
from embedcache.models import RequestOptions
from embedcache.storage.formats import encode_entry
from embedcache.storage.store import Store

_BATCH = 1000
FP = fingerprint(RequestOptions("jina-colbert-v2"))


def _disk(directory: Path) -> dict[str, int]:
    """Bytes of the directory's files by part, the index's log checkpointed first."""
    with sqlite3.connect(directory / "index.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    parts = {"data": 0, "index.db": 0, "snapshot": 0, "other": 0}
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if path.suffix in (".heap", ".f32"):
            parts["data"] += size
        elif path.name.startswith("index.db"):
            parts["index.db"] += size
        elif path.name.startswith("snapshot-"):
            parts["snapshot"] += size
        else:
            parts["other"] += size
    return parts


Make = Callable[[np.random.Generator, int], list[np.ndarray]]


def _build(directory: Path, entries: int, make: Make) -> tuple[int, float, int]:
    """Fill a cache with ``entries`` arrays from ``make``; returns the raw bytes, seconds,
    and the Redis value bytes of those arrays."""
    rng = np.random.default_rng(0)
    raw = values = 0
    start = time.perf_counter()
    with Store(directory) as store:
        for done in range(0, entries, _BATCH):
            count = min(_BATCH, entries - done)
            arrays = make(rng, count)
            keys = [bytes(row) for row in rng.integers(0, 256, (count, 16), dtype=np.uint8)]
            store.put_payloads(FP, keys, arrays, [1.0] * count)
            raw += sum(a.nbytes for a in arrays)
            values += sum(len(encode_entry(a, 1.0, FP.id)) for a in arrays)
        store.refresh_snapshot_if_due()
    return raw, time.perf_counter() - start, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=32, help="most rows of a multi-vector")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    most = args.tokens
    kinds: dict[str, Make] = {
        "multi-vector (128-d float32 rows)": lambda rng, n: [
            rng.standard_normal((int(t), 128)).astype(np.float32)
            for t in rng.integers(1, most + 1, n)
        ],
        "binary (1024-d as 128 uint8)": lambda rng, n: list(
            rng.integers(0, 256, (n, 128), dtype=np.uint8)
        ),
        "reference: today's vector (1024-d float32)": lambda rng, n: list(
            rng.standard_normal((n, 1024)).astype(np.float32)
        ),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="payload-storage-") as tmp:
        for n, (name, make) in enumerate(kinds.items()):
            directory = Path(tmp) / f"cache-{n}"
            raw, seconds, values = _build(directory, args.entries, make)
            parts = _disk(directory)
            with Store(directory) as store:
                tokens = sum(
                    stored.size // 512 for _, stored in store.listing() if stored.kind == "ragged"
                )
            rows.append((name, raw, parts, values, tokens, seconds))
            print(name, raw, parts, values, tokens, f"{seconds:.1f} s", flush=True)
    entries = args.entries
    lines = [
        "## Issue 26: bytes on disk per multi-vector token and per binary vector "
        "(`bench/payload_storage.py`)",
        "",
        f"Command: `python bench/payload_storage.py --entries {entries} --tokens {most}` "
        f"({dt.date.today().isoformat()}). {entries:,} entries of each kind, one cache each "
        f"(multi-vector entries of 1..{most} rows, uniform); on disk is every file once the "
        "index's log is checkpointed: data (`.heap`/`.f32` segments), `index.db` and the "
        "snapshot; a Redis value is its header and bytes. Sizes only: they do not depend on "
        "the machine's load.",
        "",
        "| kind | raw (as returned) | data files | index.db + snapshot + meta | on disk / raw "
        "| per entry over raw | per unit | Redis value / raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, raw, parts, values, tokens, _ in rows:
        disk = sum(parts.values())
        rest = parts["index.db"] + parts["snapshot"] + parts["other"]
        over = (disk - raw) / entries
        if tokens:
            unit = f"{disk / tokens:,.1f} B a token (raw 512)"
        else:
            unit = f"{disk / entries:,.1f} B a vector (raw {raw // entries:,})"
        lines.append(
            f"| {name} | {raw / 1e6:,.1f} MB | {parts['data'] / 1e6:,.1f} MB "
            f"| {rest / 1e6:,.1f} MB | {disk / raw:.3f} | {over:,.1f} B | {unit} "
            f"| {values / raw:.3f} |"
        )
    lines += [
        "",
        "A payload's bytes are stored as returned, nothing added in its heap; what a cache "
        "adds is its index row and snapshot columns (the same per entry whatever the kind), "
        "so a multi-vector token costs its 512 bytes plus that overhead shared by the "
        "entry's tokens, while a 128-byte binary vector costs more in index than in bits. "
        "A Redis value adds a 40-byte header (32 for a vector).",
        "",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("payload-storage", body)


if __name__ == "__main__":
    main()
