"""Packing misses into requests, alone: plain ``take`` functions, no store, no HTTP."""

from __future__ import annotations

from collections.abc import Callable

from embedcache.embedding.batches import Miss, Packer, plan_batches
from embedcache.inputs import estimate_input
from embedcache.models import RequestOptions

OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
LATE = RequestOptions("jina-embeddings-v3", task="retrieval.passage", late_chunking=True)


def misses(count: int, text: Callable[[int], str] = lambda i: f"text {i}") -> list[Miss]:
    return [Miss(f"key {i}".encode(), text(i), i, i) for i in range(count)]


def numbers(batches: list[list[Miss]]) -> list[list[int]]:
    return [[miss.slot for miss in batch] for batch in batches]


class Taking:
    """A ``take`` that keeps the misses ``keep`` accepts and records every chunk asked."""

    def __init__(self, keep: Callable[[Miss], bool] = lambda miss: True) -> None:
        self.keep = keep
        self.chunks: list[list[int]] = []

    def __call__(self, chunk: list[Miss]) -> list[Miss]:
        self.chunks.append([miss.slot for miss in chunk])
        return [miss for miss in chunk if self.keep(miss)]


def test_requests_hold_batch_size_texts_when_everything_taken_is_sent() -> None:
    packed = list(Packer(misses(23), OPTIONS, 10, 10_000).batches(Taking()))
    assert numbers(packed) == [list(range(10)), list(range(10, 20)), [20, 21, 22]]


def test_requests_stay_full_when_take_sets_entries_aside() -> None:
    # Every third entry is fetched elsewhere (or was stored since): the others still fill
    # requests of ten, instead of each planned ten going out as seven.
    take = Taking(lambda miss: miss.slot % 3 != 0)
    packed = list(Packer(misses(60), OPTIONS, 10, 10_000).batches(take))
    assert [len(batch) for batch in packed] == [10, 10, 10, 10]
    assert [slot for batch in numbers(packed) for slot in batch] == [i for i in range(60) if i % 3]


def test_requests_stay_within_the_token_budget_whatever_is_set_aside() -> None:
    long_every_fourth = misses(40, lambda i: "word " * (30 if i % 4 == 0 else 3))
    take = Taking(lambda miss: miss.slot % 5 != 0)
    packed = list(Packer(long_every_fourth, OPTIONS, 8, 60).batches(take))
    for batch, following in zip(packed, [b[0] for b in packed[1:]], strict=False):
        tokens = sum(estimate_input(miss.text) for miss in batch)
        assert len(batch) <= 8
        assert tokens <= 60
        # Full: the next text sent would not have fit, by count or by tokens.
        assert len(batch) == 8 or tokens + estimate_input(following.text) > 60
    assert sorted(m.slot for b in packed for m in b) == [i for i in range(40) if i % 5]


def test_a_text_over_the_token_budget_goes_alone() -> None:
    texts = misses(3, lambda i: "word " * (100 if i == 1 else 2))
    assert numbers(list(Packer(texts, OPTIONS, 10, 50).batches(Taking()))) == [[0], [1], [2]]


def test_the_plan_of_a_dry_run_is_the_packing_of_everything() -> None:
    texts = misses(50, lambda i: "word " * (i % 9))
    planned = numbers(list(plan_batches(texts, OPTIONS, 7, 40)))
    assert planned == numbers(list(Packer(texts, OPTIONS, 7, 40).batches(Taking())))
    assert all(len(batch) <= 7 for batch in planned)


def test_entries_are_taken_a_request_at_a_time_as_requests_are_drawn() -> None:
    take = Taking()
    drawn = Packer(misses(100), OPTIONS, 10, 10_000).batches(take)
    assert numbers([next(drawn)]) == [list(range(10))]
    assert take.chunks == [list(range(10))]  # nothing beyond the first request is taken
    next(drawn)
    assert take.chunks[1] == list(range(10, 20))


def test_a_chunk_grows_when_most_entries_are_set_aside_so_a_request_takes_few_calls() -> None:
    take = Taking(lambda miss: miss.slot % 10 == 0)  # nine in ten fetched elsewhere
    packed = list(Packer(misses(2000), OPTIONS, 20, 10_000).batches(take))
    assert [len(batch) for batch in packed] == [20] * 10
    # Asking one entry at a time would take ~2,000 calls; a chunk is at most four times a
    # request's room (and at least MIN_CHUNK), so a full request takes a handful.
    assert len(take.chunks) <= 10 * 8
    assert max(len(chunk) for chunk in take.chunks) <= Packer.MAX_SCALE * 20


def test_a_late_chunking_group_is_taken_whole_and_sent_as_one_request() -> None:
    take = Taking()
    assert numbers(list(Packer(misses(30), LATE, 10, 50).batches(take))) == [list(range(30))]
    assert take.chunks == [list(range(30))]
    aside = Taking(lambda miss: False)
    assert list(Packer(misses(30), LATE, 10, 50).batches(aside)) == []


def test_nothing_is_taken_or_sent_for_no_misses() -> None:
    take = Taking()
    assert list(Packer([], OPTIONS, 10, 50).batches(take)) == []
    assert list(Packer([], LATE, 10, 50).batches(take)) == []
    assert take.chunks == []


def test_a_text_over_the_budget_that_is_set_aside_leaves_its_room_to_the_next_ones() -> None:
    # After the first chunk the request holds 0, 1 and 3 (2 was set aside); 4 alone would
    # go over the budget, but it is fetched elsewhere too, so 5 still joins this request
    # instead of opening another.
    words = [9, 9, 1, 500, 500, 67]
    texts = misses(len(words), lambda i: "word " * words[i])
    assert sum(estimate_input(texts[i].text) for i in (0, 1, 3, 4)) > 1000
    take = Taking(lambda miss: miss.slot not in (2, 4))
    packed = list(Packer(texts, OPTIONS, 4, 1000).batches(take))
    assert numbers(packed) == [[0, 1, 3, 5]]
