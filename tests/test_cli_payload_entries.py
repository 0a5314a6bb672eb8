"""``inspect``, ``ls`` and ``stats`` on entries that are not one float32 vector (multi-vector
rows, packed bits): each says the entry's kind, what it was made from (a text, an image) and
what it holds (float, multi-vector, binary), and ``inspect`` its shape, dtype and bytes, where
it used to print a payload's row count as "float32 dims"; ``inspect --image`` looks an image up
as prewarm stored it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.inputs import IMAGE_TILE_TOKENS, Media
from embedcache.models import RequestOptions
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator, png

from .cli_helpers import as_json, invoke, ok, one_line_error
from .conftest import API_KEY

V4 = "jina-embeddings-v4"
FP = fingerprint(RequestOptions(V4, task="retrieval.passage"))
MULTI = fingerprint(RequestOptions(V4, task="retrieval.passage", return_multivector=True))
BINARY = fingerprint(RequestOptions(V4, task="retrieval.passage", embedding_type="binary"))
(RAGGED,) = text_keys(MULTI, ["multi-vector"])
(BITS,) = text_keys(BINARY, ["binary"])
VECTOR, IMAGE = text_keys(FP, ["vector", Media("image", data=b"\x89PNG")])


@pytest.fixture
def cache(cache_dir: Path) -> Path:
    """A cache holding a 7-row multi-vector entry, a 3-row int8 binary one, and a 128-d
    vector under the same settings (the width of the multi-vector rows: only the kind tells
    them apart)."""
    rng = np.random.default_rng(0)
    with Store(cache_dir) as store:
        store.put_payloads(
            MULTI, [RAGGED], [rng.standard_normal((7, 128)).astype(np.float32)], [7.0]
        )
        store.put_payloads(
            BINARY, [BITS], [rng.integers(-128, 128, (3, 16)).astype(np.int8)], [3.0]
        )
        store.put_many(FP, [(VECTOR, rng.standard_normal(128).astype(np.float32), 1.0)])
        store.put_many(
            FP.for_input("image"), [(IMAGE, rng.standard_normal(128).astype(np.float32), 9.0)]
        )
    return cache_dir


def test_inspect_shows_a_payloads_kind_shape_dtype_and_bytes(cache: Path) -> None:
    def inspected(key: bytes) -> dict[str, object]:
        found = as_json(invoke("inspect", "--key", key.hex(), "--json", cache_dir=cache))
        return {name: found[name] for name in ("kind", "shape", "dtype", "bytes", "dimensions")}

    assert inspected(RAGGED) == {"kind": "ragged", "shape": [7, 128], "dtype": "float32",
                                 "bytes": 7 * 128 * 4, "dimensions": 128}  # fmt: skip
    assert inspected(BITS) == {"kind": "bytes", "shape": [3, 16], "dtype": "int8",
                               "bytes": 48, "dimensions": 128}  # fmt: skip
    assert inspected(VECTOR) == {"kind": "vector", "shape": [128], "dtype": "float32",
                                 "bytes": 512, "dimensions": 128}  # fmt: skip
    text = ok(invoke("inspect", "--key", RAGGED.hex(), cache_dir=cache)).output
    assert (
        "payload  7 x 128 float32, 3,584 bytes (ragged: multi-vector, one row per token), "
        "7.0 tokens attributed"
    ) in text
    text = ok(invoke("inspect", "--key", BITS.hex(), cache_dir=cache)).output
    assert "3 x 16 int8, 48 bytes (bytes: packed bits, embedding_type binary, one row" in text
    text = ok(invoke("inspect", "--key", VECTOR.hex(), cache_dir=cache)).output
    assert "vector   128 float32, 1.0 tokens attributed" in text  # as it always said


def test_ls_shows_what_each_entry_is_made_from_and_holds_in_its_table_and_json(
    cache: Path, tmp_path: Path
) -> None:
    lines = ok(invoke("ls", "--sort", "oldest", cache_dir=cache)).stdout.splitlines()
    assert lines[0].split()[-2:] == ["INPUT", "OUTPUT"]
    shown = {line.split()[0]: line.split()[-2:] for line in lines[1:]}
    assert shown == {
        RAGGED.hex(): ["text", "multi-vector"],
        BITS.hex(): ["text", "binary"],
        VECTOR.hex(): ["text", "float"],
        IMAGE.hex(): ["image", "float"],
    }
    listed = {
        e["key"]: (e["input"], e["output"], e.get("kind"))
        for e in as_json(invoke("ls", "--json", cache_dir=cache))
    }
    assert listed == {
        RAGGED.hex(): ("text", "multi-vector", "ragged"),
        BITS.hex(): ("text", "binary", "bytes"),
        VECTOR.hex(): ("text", "float", None),
        IMAGE.hex(): ("image", "float", None),
    }
    # A page of texts' vectors alone keeps its narrower table.
    with Store(tmp_path / "plain") as store:
        store.put_many(FP, [(VECTOR, np.ones(128, np.float32), 1.0)])
    header = ok(invoke("ls", cache_dir=tmp_path / "plain")).stdout.splitlines()[0]
    assert header.split() == ["KEY", "CREATED", "MODEL", "TASK", "DIMS", "TOKENS"]


def test_stats_counts_entries_by_input_and_output_apart(cache: Path) -> None:
    groups = as_json(invoke("stats", "--json", cache_dir=cache))["groups"]
    counted = sorted(
        (g["input"], g["output"], g.get("kind", "-"), g["dimensions"], g["entries"]) for g in groups
    )
    assert counted == [
        ("image", "float", "-", 128, 1),
        ("text", "binary", "bytes", 128, 1),
        ("text", "float", "-", 128, 1),  # a vector: no kind
        ("text", "multi-vector", "ragged", 128, 1),
    ]
    text = ok(invoke("stats", cache_dir=cache)).output
    assert "model / task / dimensions [input output]" in text
    assert "1  jina-embeddings-v4 / retrieval.passage / 128 text multi-vector  (" in text
    assert "1  jina-embeddings-v4 / retrieval.passage / 128 text binary  (" in text
    assert "1  jina-embeddings-v4 / retrieval.passage / 128 text float  (" in text
    assert "1  jina-embeddings-v4 / retrieval.passage / 128 image float  (" in text


def test_inspect_looks_an_image_up_by_its_file_as_prewarm_stored_it(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "cat.png"
    photo.write_bytes(png(640, 480))
    args = ("--model", "jina-clip-v2")
    Store(cache_dir).close()  # an empty cache
    url = emulator.url  # the upstream is in the key: look up where prewarm fetched from
    looked = ("inspect", "--image", str(photo), *args, "--json")
    before = as_json(invoke(*looked, cache_dir=cache_dir, base_url=url))
    assert before["cached"] is False
    ok(invoke("prewarm", "--images", str(photo), *args, cache_dir=cache_dir, base_url=url,
              key=API_KEY))  # fmt: skip
    found = as_json(invoke(*looked, cache_dir=cache_dir, base_url=url))
    assert (found["cached"], found["key"], found["kind"]) == (True, before["key"], "vector")
    assert (found["input"], found["output"]) == ("image", "float")  # not a text's entry
    assert found["tokens"] == 2 * IMAGE_TILE_TOKENS
    refused = one_line_error(invoke("inspect", "--image", str(photo), cache_dir=cache_dir))
    assert "--image: jina-embeddings-v3 does not take images" in refused
    usage = one_line_error(invoke("inspect", "a text", "--image", str(photo)), code=2)
    assert "give one of TEXT, --key, --image or --pdf" in usage
