"""Per-caller and per-model/task figures (:mod:`embedcache.proxy.usage`, ``usage.db``), fed
the request records directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedcache.proxy.requestlog import RequestRecord, caller_hash
from embedcache.proxy.usage import OTHERS, USAGE_FILE, Usage

from .conftest import API_KEY, MakeProxy
from .serving import ProxyInProcess

MODEL = "jina-embeddings-v3"


def _record(
    key: str | None, *, model: str = MODEL, task: str | None = None, **fields: Any
) -> RequestRecord:
    record = RequestRecord("/v1/embeddings", "jina", key, model, task)
    for name, value in {"texts": 2, "hits": 1, "misses": 1, "tokens_spent": 10,
                        "tokens_saved": 4.5, "status": 200, **fields}.items():  # fmt: skip
        setattr(record, name, value)
    return record


def _by(rows: list[dict[str, Any]], name: str) -> dict[Any, dict[str, Any]]:
    return {row[name]: row for row in rows}


# Usage, fed records directly -----------------------------------------------------------


def test_usage_adds_up_each_caller_and_each_model_and_task(tmp_path: Path) -> None:
    usage = Usage(tmp_path, budgets_on=True)
    usage.add([
        _record("k_aaaaaaaaaaaa", task="retrieval.query"),
        _record("k_aaaaaaaaaaaa", task="retrieval.query", hits=2, misses=0, tokens_spent=0),
        _record("k_bbbbbbbbbbbb", task="retrieval.passage", status=429, hits=0, misses=0,
                tokens_spent=0, tokens_saved=0.0),
        _record(None, model="jina-clip-v2", status=502, hits=0, tokens_spent=0),
    ])  # fmt: skip
    report = usage.report(price=0.02)
    usage.close()
    callers = _by(report["callers"], "key")
    first = callers["k_aaaaaaaaaaaa"]
    assert (first["requests"], first["texts"], first["hits"], first["misses"]) == (2, 4, 3, 1)
    assert (first["tokens_spent"], first["tokens_saved"]) == (10, 9.0)
    assert first["usd_spent"] == round(10 * 0.02 / 1e6, 6)
    assert (first["errors"], first["over_budget"]) == (0, 0)
    assert (callers["k_bbbbbbbbbbbb"]["errors"], callers["k_bbbbbbbbbbbb"]["over_budget"]) == (1, 1)
    assert (callers[None]["errors"], callers[None]["over_budget"]) == (1, 0)  # a 502: no budget
    models = {(row["model"], row["task"]): row for row in report["models"]}
    assert models[(MODEL, "retrieval.query")]["requests"] == 2
    assert models[(MODEL, "retrieval.passage")]["over_budget"] == 1
    assert models[("jina-clip-v2", None)]["errors"] == 1
    assert report["usage"]["period"] == "lifetime"
    assert report["usage"]["callers_count"] == 3


def test_usage_is_shared_by_two_writers_on_one_directory_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    first, second = Usage(tmp_path), Usage(tmp_path)
    first.add([_record("k_aaaaaaaaaaaa")])
    second.add([_record("k_aaaaaaaaaaaa"), _record("k_bbbbbbbbbbbb")])
    second.flush()  # first's figures are added by the report's own flush
    callers = _by(first.report(price=0.0)["callers"], "key")
    assert callers["k_aaaaaaaaaaaa"]["requests"] == 2
    assert callers["k_bbbbbbbbbbbb"]["requests"] == 1
    first.add([_record("k_bbbbbbbbbbbb")])
    first.close()  # held figures are written on close
    second.close()
    again = Usage(tmp_path)
    callers = _by(again.report(price=0.0)["callers"], "key")
    again.close()
    assert (callers["k_aaaaaaaaaaaa"]["requests"], callers["k_bbbbbbbbbbbb"]["requests"]) == (2, 2)


def test_usage_holds_a_bounded_number_of_callers_folding_the_smallest_into_others(
    tmp_path: Path,
) -> None:
    usage = Usage(tmp_path, max_callers=20, flush_seconds=3600)
    big = [_record("k_big000000000", tokens_spent=1000)] * 3
    usage.add(big)
    many = [_record(f"k_{i:012x}") for i in range(50)]
    usage.add(many)
    assert len(usage._held) <= 20  # in memory, before any flush
    for start in range(0, 200, 25):  # and in the table, over several flushes
        usage.add([_record(f"k_{i:012x}") for i in range(1000 + start, 1025 + start)])
        usage.flush()
    report = usage.report(price=0.0, top=100)
    usage.close()
    assert report["usage"]["callers_count"] <= 20
    callers = _by(report["callers"], "key")
    assert callers["k_big000000000"]["requests"] == 3  # the largest is kept by name
    # Nothing is lost: every request is in a row, the folded ones in "others".
    assert sum(row["requests"] for row in report["callers"]) == 3 + 50 + 200
    assert callers[OTHERS]["requests"] > 0


def test_usage_reports_the_top_callers_and_the_rest_as_totals(tmp_path: Path) -> None:
    usage = Usage(tmp_path)
    usage.add([_record(f"k_{i:012x}", tokens_spent=i) for i in range(10)])
    report = usage.report(price=0.0, top=3)
    usage.close()
    assert [row["key"] for row in report["callers"]] == [f"k_{i:012x}" for i in (9, 8, 7)]
    assert report["usage"]["callers_rest"]["tokens_spent"] == sum(range(7))
    assert report["usage"]["callers_rest"]["requests"] == 7


def test_the_key_never_reaches_usage_db(tmp_path: Path) -> None:
    usage = Usage(tmp_path)
    usage.add([_record(caller_hash(API_KEY))])
    usage.close()
    files = list(tmp_path.glob(USAGE_FILE + "*"))
    assert files
    for path in files:
        assert API_KEY.encode() not in path.read_bytes()
    assert caller_hash(API_KEY) is not None


def test_without_admin_endpoints_a_proxy_keeps_no_figures_and_hands_nothing_over(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy()
    assert isinstance(proxy, ProxyInProcess)
    body = {"model": "jina-embeddings-v3", "input": ["counted by no one"]}
    for _ in range(2):
        assert proxy.embed(body, API_KEY).status_code == 200
    assert proxy.proxy.outcomes is None  # the hit path hands nothing over
    proxy.stop()
    assert not (proxy.cache_dir / USAGE_FILE).exists()
