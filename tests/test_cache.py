"""The caching core end to end: real HTTP to the emulator, a real cache directory (SQLite
index, segment files) in a temp dir."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from embedcache import (
    CacheMissError,
    JinaClient,
    JinaEmbeddingFunction,
    RequestOptions,
    ResponseFormatError,
    Store,
    UpstreamResult,
)
from embedcache.assembly import build_embedder
from embedcache.errors import APIError, AuthenticationError, InvalidInputError
from embedcache.inputs import Input
from embedcache.testing import Fault, JinaEmulator

from .conftest import damage_entry

MakeEF = Callable[..., JinaEmbeddingFunction]
TEXTS = ["first text", "second text", "third text"]


@pytest.fixture(autouse=True)
def _both_index_modes(index_mode: str) -> None:
    """Every test here runs against the snapshot and against SQL alone."""


def sent_inputs(emulator: JinaEmulator) -> list[list[str]]:
    return [r.texts for r in emulator.requests]


def test_hit_is_bit_identical_to_the_first_fetch(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    first = make_ef().embed(TEXTS)
    second_ef = make_ef()
    second = second_ef.embed(TEXTS)
    assert first.tobytes() == second.tobytes()
    assert len(emulator.requests) == 1
    assert second_ef.stats.hits == 3
    assert second_ef.stats.requests == 0
    assert (
        first[0].tobytes()
        == emulator.expected_embedding(TEXTS[0], task="retrieval.passage").tobytes()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task": "retrieval.query"},
        {"task": "text-matching"},
        {"dimensions": 256},
        {"dimensions": 1024},
        {"model_name": "jina-embeddings-v4"},
        {"late_chunking": True},
        {"normalized": False},
        {"truncate": True},
    ],
)
def test_changed_settings_are_misses(
    make_ef: MakeEF, emulator: JinaEmulator, kwargs: dict[str, object]
) -> None:
    make_ef()(TEXTS)
    changed = make_ef(**kwargs)
    changed(TEXTS)
    assert len(emulator.requests) == 2
    assert changed.stats.hits == 0


def test_late_chunking_group_order_matters(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    ef = make_ef(late_chunking=True)
    forward = ef(["a", "b", "c"])
    again = ef(["a", "b", "c"])
    backward = ef(["c", "b", "a"])
    assert len(emulator.requests) == 2
    assert forward[0].tobytes() == again[0].tobytes()
    assert forward[0].tobytes() != backward[2].tobytes()
    assert sent_inputs(emulator) == [["a", "b", "c"], ["c", "b", "a"]]


def test_late_chunking_text_in_another_group_is_a_miss(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    ef = make_ef(late_chunking=True)
    ef(["a", "b"])
    ef(["a", "z"])
    assert len(emulator.requests) == 2


def test_late_chunking_group_is_never_split(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    ef = make_ef(late_chunking=True, batch_size=2, max_batch_tokens=1)
    ef([f"text {i}" for i in range(10)])
    assert [r.inputs for r in emulator.requests] == [10]


def test_oversized_late_chunking_group_fails_before_any_request(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    ef = make_ef("jina-embeddings-v4", late_chunking=True, task="retrieval.passage")
    with pytest.raises(InvalidInputError, match="at most 512 inputs; got 513"):
        ef([str(i) for i in range(513)])
    assert emulator.requests == []


def test_duplicates_within_a_call_are_sent_once(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    ef = make_ef()
    vectors = ef.embed(["a", "b", "a", "a", "b"])
    assert sent_inputs(emulator) == [["a", "b"]]
    assert vectors[0].tobytes() == vectors[2].tobytes() == vectors[3].tobytes()
    assert ef.stats.misses == 2


def test_only_misses_are_sent(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    ef = make_ef()
    ef.embed(["a", "b"])
    out = ef.embed(["b", "c", "a", "d"])
    assert sent_inputs(emulator) == [["a", "b"], ["c", "d"]]
    assert out[1].tobytes() == emulator.expected_embedding("c", task="retrieval.passage").tobytes()


def test_batches_respect_batch_size(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    make_ef(batch_size=3, max_concurrency=1).embed([f"t{i}" for i in range(8)])
    assert [r.inputs for r in emulator.requests] == [3, 3, 2]


def test_batches_respect_the_model_item_limit(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    ef = make_ef("jina-embeddings-v4", task="retrieval.passage", batch_size=5000)
    ef.embed([f"t{i}" for i in range(1100)])
    assert sorted(r.inputs for r in emulator.requests) == [76, 512, 512]


def test_batches_respect_the_token_budget(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    text = "word " * 50  # 50 estimated tokens
    make_ef(max_batch_tokens=120, max_concurrency=1).embed([f"{i} {text}" for i in range(5)])
    assert [r.inputs for r in emulator.requests] == [2, 2, 1]


def test_concurrent_batches_all_land_in_input_order(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    emulator.latency = 0.02
    texts = [f"t{i}" for i in range(40)]
    out = make_ef(batch_size=4, max_concurrency=4).embed(texts)
    assert len(emulator.requests) == 10
    for i in (0, 17, 39):
        assert (
            out[i].tobytes()
            == emulator.expected_embedding(texts[i], task="retrieval.passage").tobytes()
        )


def test_429_and_5xx_are_retried_and_cached(
    client: JinaClient, emulator: JinaEmulator, make_ef: MakeEF
) -> None:
    emulator.inject(Fault(status=429, retry_after="0"), Fault(status=502))
    ef = make_ef(upstream=client)
    ef.embed(TEXTS)
    assert [r.status for r in emulator.requests] == [429, 502, 200]
    make_ef(upstream=client).embed(TEXTS)
    assert len(emulator.requests) == 3


@pytest.mark.parametrize("status", [401, 422])
def test_401_and_422_are_not_retried_and_nothing_is_cached(
    make_ef: MakeEF, emulator: JinaEmulator, cache_dir: Path, status: int
) -> None:
    emulator.inject(Fault(status=status))
    with pytest.raises(APIError) as info:
        make_ef().embed(TEXTS)
    assert info.value.status == status
    assert len(emulator.requests) == 1
    with Store(cache_dir) as store:
        assert len(store) == 0


@pytest.mark.parametrize(
    "fault",
    [
        Fault(body=b'{"data": ['),
        Fault(count_delta=-1),
        Fault(dim_delta=1),
        Fault(dim_delta=-3),
        Fault(bad_value=float("nan")),
        Fault(bad_value=float("inf")),
        Fault(bad_base64=True),
        Fault(duplicate_index=True),
    ],
    ids=["bad-json", "count", "dim+1", "dim-3", "nan", "inf", "base64", "dup-index"],
)
def test_malformed_responses_raise_and_cache_nothing(
    make_ef: MakeEF, emulator: JinaEmulator, cache_dir: Path, fault: Fault
) -> None:
    emulator.inject(fault)
    with pytest.raises(ResponseFormatError):
        make_ef().embed(TEXTS)
    with Store(cache_dir) as store:
        assert len(store) == 0


class Flaky:
    """An upstream that fails on chosen calls: faults the emulator cannot time precisely."""

    def __init__(self, inner: JinaClient, fail_on: set[int]) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def embed(self, texts: Sequence[Input], options: RequestOptions) -> UpstreamResult:
        self.calls += 1
        if self.calls in self.fail_on:
            raise APIError("injected failure", status=400)
        return self.inner.embed(texts, options)


def test_each_batch_is_committed_as_it_arrives_and_a_rerun_sends_only_the_rest(
    client: JinaClient, emulator: JinaEmulator, cache_dir: Path
) -> None:
    texts = [f"t{i}" for i in range(10)]
    with Store(cache_dir) as store:
        embedder = build_embedder(store, Flaky(client, {3}), batch_size=3, max_concurrency=1)
        with pytest.raises(APIError, match="injected"):
            embedder.embed(texts, RequestOptions("jina-embeddings-v3"))
        assert len(store) == 6
    emulator.reset()
    with Store(cache_dir) as store:
        build_embedder(store, client, batch_size=3).embed(
            texts, RequestOptions("jina-embeddings-v3")
        )
    assert sorted(sent_inputs(emulator)) == [["t6", "t7", "t8"], ["t9"]]


def test_a_failed_batch_does_not_discard_concurrent_successes(
    client: JinaClient, emulator: JinaEmulator, cache_dir: Path
) -> None:
    with Store(cache_dir) as store:
        embedder = build_embedder(store, Flaky(client, {1}), batch_size=2, max_concurrency=4)
        with pytest.raises(APIError):
            embedder.embed([f"t{i}" for i in range(8)], RequestOptions("jina-embeddings-v3"))
        embedder.close()
        assert len(store) == 6


def test_offline_mode_raises_with_the_miss_count_and_sends_nothing(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    make_ef().embed(["a"])
    with pytest.raises(CacheMissError, match="2 of 3 distinct texts") as info:
        make_ef(offline=True).embed(["a", "b", "c"])
    assert info.value.misses == 2
    assert len(emulator.requests) == 1


def test_offline_mode_from_environment(
    make_ef: MakeEF, emulator: JinaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDCACHE_OFFLINE", "1")
    with pytest.raises(CacheMissError):
        make_ef().embed(["a"])
    assert emulator.requests == []


def test_fully_cached_run_needs_no_key_and_no_network(
    make_ef: MakeEF, cache_dir: Path, emulator: JinaEmulator
) -> None:
    first = make_ef().embed(TEXTS)
    # Nothing listens at port 9; declared the emulator, it shares the emulator's entries.
    ef = JinaEmbeddingFunction(
        cache_dir=cache_dir, base_url="http://127.0.0.1:9", upstream_as=emulator.url
    )
    try:
        assert ef.embed(TEXTS).tobytes() == first.tobytes()
    finally:
        ef.close()


def test_a_miss_without_key_names_both_env_vars(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    with pytest.raises(AuthenticationError, match="JINAAI_API_KEY or JINA_API_KEY"):
        make_ef(api_key=None).embed(["a"])
    assert emulator.requests == []


def test_stats_count_tokens_spent_and_saved(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    first = make_ef()
    first.embed(TEXTS)
    spent = emulator.requests[0].tokens
    assert first.stats.tokens_spent == spent
    second = make_ef()
    second.embed([*TEXTS[:2], "new"])
    assert second.stats.hits == 2
    assert 0 < second.stats.tokens_saved < spent


def test_damaged_entry_is_refetched(
    make_ef: MakeEF, emulator: JinaEmulator, cache_dir: Path
) -> None:
    make_ef().embed(["a"])
    damage_entry(cache_dir)
    out = make_ef().embed(["a"])
    assert len(emulator.requests) == 2
    assert out[0].tobytes() == emulator.expected_embedding("a", task="retrieval.passage").tobytes()


def test_empty_list_returns_empty_without_a_request(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    ef = make_ef()
    assert ef.encode_documents([]) == []
    assert ef.embed([]).shape == (0, 1024)
    assert emulator.requests == []


def test_empty_string_is_passed_through(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    assert make_ef().embed([""]).shape == (1, 1024)
    assert sent_inputs(emulator) == [[""]]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ("just a string", "texts must be a list of str, got str"),
        (None, "got NoneType"),
        (["ok", None], r"texts\[1\] must be a str, got NoneType"),
        (["ok", b"bytes"], r"texts\[1\] must be a str, got bytes"),
        ([["nested"]], r"texts\[0\] must be a str, got list"),
        (["ok", 3], r"texts\[1\] must be a str, got int"),
    ],
)
def test_bad_input_fails_before_any_request(
    make_ef: MakeEF, emulator: JinaEmulator, texts: object, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_ef().embed(texts)  # type: ignore[arg-type]
    assert emulator.requests == []


def test_text_over_the_token_limit_fails_before_any_request(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    huge = "x " * 9000
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is about 9000 tokens.*8192"):
        make_ef().embed(["fine", huge])
    assert emulator.requests == []


def test_truncate_lets_long_text_through(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    assert make_ef(truncate=True).embed(["x " * 9000]).shape == (1, 1024)
    assert len(emulator.requests) == 1


def test_unknown_model_passes_through_to_the_api(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    with pytest.raises(APIError, match="INPUT_MODEL_NOT_FOUND") as info:
        make_ef("jina-embeddings-v9").embed(["a"])
    assert info.value.status == 400


def test_a_batch_another_writer_committed_meanwhile_is_not_fetched_again(
    client: JinaClient, emulator: JinaEmulator, cache_dir: Path
) -> None:
    texts = [f"t{i}" for i in range(15)]
    options = RequestOptions("jina-embeddings-v3")

    class Racing:
        """Upstream whose first call lets another process's writer commit texts 5-9."""

        def __init__(self) -> None:
            self.calls = 0

        def embed(self, batch: Sequence[Input], opts: RequestOptions) -> UpstreamResult:
            self.calls += 1
            if self.calls == 1:
                with Store(cache_dir) as other:
                    build_embedder(other, client).embed(texts[5:10], opts)
            return client.embed(batch, opts)

    with Store(cache_dir) as store:
        embedder = build_embedder(store, Racing(), batch_size=5, max_concurrency=1)
        out = embedder.embed(texts, options)
        assert embedder.stats.hits == 5
        assert embedder.stats.misses == 10
    # Each text fetched once, the other writer's five included.
    assert sorted(emulator.received_texts()) == sorted(texts)
    for i in (0, 7, 14):
        expected = emulator.expected_embedding(texts[i], task=None)
        assert out[i].tobytes() == expected.tobytes()


def test_late_chunking_group_with_a_damaged_vector_is_refetched_whole(
    make_ef: MakeEF, emulator: JinaEmulator, cache_dir: Path
) -> None:
    group = ["first part", "second part", "third part"]
    first = make_ef(late_chunking=True).embed(group)
    damage_entry(cache_dir)
    again = make_ef(late_chunking=True).embed(group)
    assert sent_inputs(emulator) == [group, group]
    assert again.tobytes() == first.tobytes()
