"""`embedcache analyze`: its figures against figures computed here from the same files."""

from __future__ import annotations

import base64
import gzip
import json
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.cli import main
from embedcache.cli.units import dollars
from embedcache.config import upstream_id
from embedcache.models import resolve_options
from embedcache.testing import png
from embedcache.tokens import estimate_tokens
from tests.cli_helpers import as_json, ok, one_line_error

PRICE = 0.05
SUMMED = ("texts", "hits", "misses", "tokens_spent", "tokens_saved")


def _log_line(rng: random.Random, key: str | None, model: str, status: int) -> dict[str, Any]:
    texts = rng.randint(1, 64)
    hits = rng.randint(0, texts) if status == 200 else 0
    misses = texts - hits if status == 200 else 0
    return {
        "time": "2026-12-07T19:51:13.123Z", "route": "/v1/embeddings", "dialect": "jina",
        "key": key, "model": model, "task": "retrieval.passage", "dimensions": None,
        "texts": texts, "hits": hits, "misses": misses,
        "tokens_spent": misses * 3, "tokens_saved": hits * 3, "ms": 1.5, "status": status,
        "cache": ("hit" if not misses else "miss" if not hits else "partial")
        if status == 200 else None,
    }  # fmt: skip


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _log(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rng = random.Random(25)
    keys = ["k_3f2a9c1b7d4e", "k_000000000001", None]
    models = ["jina-embeddings-v3", "jina-embeddings-v4"]
    lines = [
        _log_line(rng, rng.choice(keys), rng.choice(models), rng.choice([200, 200, 200, 429]))
        for _ in range(200)
    ]
    return _write(tmp_path / "requests.log", lines), lines


def _invoke(*args: str, stdin: bytes | None = None) -> Any:
    return CliRunner().invoke(main, ["analyze", *args], input=stdin)


def test_analyze_log_figures_equal_the_sums_of_its_lines(tmp_path: Path) -> None:
    path, lines = _log(tmp_path)
    report = as_json(_invoke("--json", str(path)))
    served = [line for line in lines if line["status"] == 200]
    assert report["requests"] == len(lines)
    assert report["refused"] == len(lines) - len(served)
    assert report["texts"] == sum(line["texts"] for line in lines)
    for name in ("hits", "misses", "tokens_saved"):
        assert report[name] == sum(line[name] for line in served), name
    hits, misses = report["hits"], report["misses"]
    assert report["repeat_rate"] == round(hits / (hits + misses), 6)
    assert report["usd_saved"] == dollars(report["tokens_saved"], PRICE)
    assert report["usd_spent"] == dollars(report["tokens_spent"], PRICE)
    for group, field in (("by_key", "key"), ("by_model", "model")):
        expected: dict[Any, Counter[str]] = defaultdict(Counter)
        for line in served:
            expected[line[field]].update({name: line[name] for name in SUMMED})
        got = {row[field]: row for row in report[group]}
        assert set(got) == {line[field] for line in lines}
        for value, sums in expected.items():
            assert {name: got[value][name] for name in SUMMED if name != "texts"} == {
                name: sums[name] for name in SUMMED if name != "texts"
            }
    # A log without request digests (written before they were) cannot tell what repeats.
    assert report["could_still_save"] is None


def _bodies(tmp_path: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    rng = random.Random(7)
    words = [f"text number {i}" for i in range(40)]
    bodies: list[dict[str, Any]] = []
    for i in range(60):
        body: dict[str, Any] = {
            "model": "jina-embeddings-v3",
            "input": [rng.choice(words) for _ in range(rng.randint(1, 8))],
        }
        if i % 3 == 0:
            body["task"] = "retrieval.query"  # another setting: never a hit for the others
        if i % 5 == 0:
            body["dimensions"] = 256
        if i % 4 == 0:  # OpenAI's dialect: encoding_format changes no key
            body["encoding_format"] = "float"
        bodies.append(body)
    half = len(bodies) // 2
    files = [
        _write(tmp_path / "a.jsonl", bodies[:half]),
        _write(tmp_path / "b.jsonl", bodies[half:]),
    ]
    return files, bodies


def _expected_for_bodies(bodies: list[dict[str, Any]]) -> dict[str, int]:
    """The figures as this test computes them: a plain set of keys, the tokens of each."""
    seen: set[bytes] = set()
    counted: Counter[bytes] = Counter()
    figures: Counter[str] = Counter()
    for body in bodies:
        options = resolve_options(body["model"], body.get("task"), body.get("dimensions"))
        keys = text_keys(fingerprint(options, upstream_id("https://api.jina.ai")), body["input"])
        for key, text in zip(keys, body["input"], strict=True):
            tokens = estimate_tokens(text)
            figures["texts"] += 1
            if key in seen:
                figures["hits"] += 1
                figures["tokens_saved"] += tokens
            else:
                seen.add(key)
                figures["misses"] += 1
                figures["tokens_spent"] += tokens
            counted[key] += 1
    figures["could_texts"] = sum(1 for key, n in counted.items() if n > 1)
    return dict(figures)


def test_analyze_bodies_count_repeats_as_the_cache_keys_them(tmp_path: Path) -> None:
    files, bodies = _bodies(tmp_path)
    report = as_json(_invoke("--json", *map(str, files)))
    expected = _expected_for_bodies(bodies)
    assert report["requests"] == report["body_lines"] == len(bodies)
    for name in SUMMED:
        assert report[name] == expected[name], name
    assert report["repeat_rate"] == round(expected["hits"] / expected["texts"], 6)
    # Misses that repeat later: distinct texts seen more than once (in-request repeats
    # included, the proxy fetching them once).
    assert report["could_still_save"]["texts"] <= expected["could_texts"]
    assert report["could_still_save"]["texts"] > 0
    settings = {(row["model"], row["task"], row["dimensions"]) for row in report["top_settings"]}
    assert ("jina-embeddings-v3", "retrieval.query", 256) in settings
    assert sum(row["hits"] for row in report["top_settings"]) == expected["hits"]


def test_analyze_counts_a_text_repeated_in_a_later_request_as_still_to_save(
    tmp_path: Path,
) -> None:
    bodies = [
        {"model": "jina-embeddings-v3", "input": ["alpha beta", "gamma"]},
        {"model": "jina-embeddings-v3", "input": ["alpha beta", "delta"]},
        {"model": "jina-embeddings-v3", "input": ["alpha beta"], "task": "retrieval.query"},
    ]
    report = as_json(_invoke("--json", str(_write(tmp_path / "b.jsonl", bodies))))
    assert (report["hits"], report["misses"]) == (1, 4)
    tokens = estimate_tokens("alpha beta")
    assert report["could_still_save"] == {
        "texts": 1,
        "tokens": tokens,
        "usd": dollars(tokens, PRICE),
        "asked_again": {"texts": 1, "tokens": tokens},
        "fetched_again": {"texts": 0, "tokens": 0},
    }


def test_analyze_skips_malformed_lines_and_warns_once_naming_the_first(tmp_path: Path) -> None:
    path, lines = _log(tmp_path)
    good = path.read_text().splitlines()
    broken = [good[0], "not json", good[1], '{"route": "/v1/embeddings"}', "[1, 2]", *good[2:]]
    path.write_text("\n".join(broken) + "\n")
    result = ok(_invoke("--json", str(path)))
    report = json.loads(result.stdout)
    assert report["malformed_lines"] == 3
    assert report["requests"] == len(lines)
    warnings = [line for line in result.stderr.splitlines() if "malformed" in line]
    assert warnings == [f"Warning: skipped 3 malformed lines (the first at {path}:2: not JSON)"]


def test_analyze_exits_1_naming_file_and_line_when_no_line_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "junk.log"
    path.write_text('\n{"input": [1, 2]}\n{"no": "route"}\n')
    error = one_line_error(_invoke(str(path)))
    assert error == (
        f"Error: no line could be read; the first malformed: {path}:2: "
        "input holds token ids, which no Jina model takes"
    )
    empty = tmp_path / "empty.log"
    empty.write_text("\n")
    assert "empty.log holds no JSON lines" in one_line_error(_invoke(str(empty)))


def test_analyze_reads_gzip_by_its_content_and_stdin(tmp_path: Path) -> None:
    path, _lines = _log(tmp_path)
    plain = as_json(_invoke("--json", str(path)))
    packed = tmp_path / "requests.log.1"  # no .gz suffix: told by its first bytes
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert as_json(_invoke("--json", str(packed))) == plain
    assert as_json(_invoke("--json", "-", stdin=path.read_bytes())) == plain
    assert as_json(_invoke("--json", "-", stdin=packed.read_bytes())) == plain


def test_analyze_damaged_gzip_is_a_one_line_error(tmp_path: Path) -> None:
    path, _lines = _log(tmp_path)
    packed = tmp_path / "cut.gz"
    packed.write_bytes(gzip.compress(path.read_bytes())[:200])
    assert "cut.gz" in one_line_error(_invoke(str(packed)))


def test_analyze_json_has_every_documented_field(tmp_path: Path) -> None:
    files = _bodies(tmp_path)[0]
    report = as_json(_invoke("--json", "--price-per-million", "0.02", *map(str, files)))
    row = {"requests", "texts", "hits", "misses", "refused", "repeat_rate", "tokens_spent",
           "tokens_saved", "usd_spent", "usd_saved"}  # fmt: skip
    assert set(report) == row | {
        "log_lines", "body_lines", "uncacheable", "malformed_lines", "could_still_save",
        "price_per_million_tokens", "by_kind", "top_settings", "by_key", "by_model",
    }  # fmt: skip
    assert report["price_per_million_tokens"] == 0.02
    assert set(report["could_still_save"]) == {
        "texts", "tokens", "usd", "asked_again", "fetched_again",
    }  # fmt: skip
    assert set(report["top_settings"][0]) == row | {"model", "task", "dimensions"}
    assert set(report["by_key"][0]) == row | {"key"}
    assert set(report["by_model"][0]) == row | {"model"}
    assert set(report["by_kind"][0]) == row | {"kind"}


def test_analyze_refuses_options_it_has_no_use_for(tmp_path: Path) -> None:
    path, _lines = _log(tmp_path)
    result = _invoke("--cache-dir", str(tmp_path), str(path))
    assert result.exit_code == 2
    assert "does not use --cache-dir" in result.output


def test_analyze_runs_as_a_command_with_a_table_and_help_example(tmp_path: Path) -> None:
    path, lines = _log(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "embedcache", "analyze", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"requests          {len(lines):,}" in done.stdout
    for title in ("Top repeated request settings", "Per key", "Per model"):
        assert title in done.stdout
    helped = ok(_invoke("--help")).output
    assert "embedcache analyze requests.log" in helped


def test_analyze_counts_a_logged_request_fetched_again_as_still_to_save(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = []
    for number, digest in enumerate(["r_00000000000000a1", "r_00000000000000b2", None]):
        line = _log_line(rng, "k_3f2a9c1b7d4e", "jina-embeddings-v3", 200)
        line |= {"hits": 0, "misses": 4, "tokens_spent": 12 + number, "cache": "miss"}
        lines.append(line | {"digest": digest})
    # The first request fetched again (the cache had not kept it), twice; the second once
    # more but refused; the digest-less line is a hit.
    again = lines[0] | {"tokens_spent": 20}
    refused = lines[1] | {"status": 429, "hits": 0, "misses": 0, "cache": None}
    lines += [again, again, refused]
    report = as_json(_invoke("--json", str(_write(tmp_path / "requests.log", lines))))
    assert report["could_still_save"] == {
        "texts": 8,
        "tokens": 40,
        "usd": dollars(40, PRICE),
        "asked_again": {"texts": 0, "tokens": 0},
        "fetched_again": {"texts": 8, "tokens": 40},
    }
    text = _invoke(str(tmp_path / "requests.log"))
    assert "40 tokens" in text.output
    assert "8 texts fetched again (the cache had not kept them)" in text.output


def test_analyze_keys_each_output_kind_and_images_as_the_proxy_caches_them(
    tmp_path: Path,
) -> None:
    image = base64.b64encode(png(4, 4, seed=1)).decode()
    v3, v4 = "jina-embeddings-v3", "jina-embeddings-v4"
    bodies = [
        {"model": v3, "input": ["alpha"]},
        {"model": v3, "input": ["alpha"], "embedding_type": "base64"},  # the same entry
        {"model": v3, "input": ["alpha"], "embedding_type": "binary"},  # an entry of its own
        {"model": v3, "input": ["alpha"], "embedding_type": "ubinary"},
        {"model": v4, "input": ["alpha"], "return_multivector": True},
        {"model": "jina-colbert-v2", "input": ["alpha"], "input_type": "query"},
        {"model": "jina-clip-v2", "input": [{"image": image}, "alpha"]},
        {"model": "jina-clip-v2", "input": [{"bytes": image}]},  # the same image
        {"model": v3, "input": ["alpha"], "embedding_type": ["float", "binary"]},  # forwarded
    ]
    report = as_json(_invoke("--json", str(_write(tmp_path / "b.jsonl", bodies))))
    assert report["uncacheable"] == 1
    assert (report["hits"], report["misses"]) == (2, 7)
