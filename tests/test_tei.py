"""TEI's ``/embed`` format as pure functions (:mod:`embedcache.proxy.tei`), no HTTP."""

from __future__ import annotations

import orjson
import pytest

from embedcache.proxy.tei import TeiInputError, parse_embed, render_embed, render_error

V3 = "jina-embeddings-v3"


def parse(
    body: object, model: str = V3, task: str | None = "retrieval.passage"
) -> list[tuple[str | None, list[str], list[int]]]:
    """``(task, texts, positions)`` of each group, in order."""
    parsed = parse_embed(orjson.dumps(body), model, task)
    return [(g.options.task, g.texts, g.positions) for g in parsed.groups]


def test_groups_follow_the_first_appearance_of_each_task_and_keep_positions() -> None:
    body = {"inputs": ["retrieval.query: q1", "d1", "retrieval.query: q2", "text-matching: t"]}
    assert parse(body) == [
        ("retrieval.query", ["q1", "q2"], [0, 2]),
        ("retrieval.passage", ["d1"], [1]),
        ("text-matching", ["t"], [3]),
    ]


def test_an_alias_prefix_is_sent_as_the_apis_task_name_and_only_one_prefix_is_removed() -> None:
    body = {"inputs": ["clustering: a", "retrieval.query: retrieval.passage: b"]}
    assert parse(body) == [
        ("separation", ["a"], [0]),
        ("retrieval.query", ["retrieval.passage: b"], [1]),
    ]


def test_a_model_without_tasks_takes_every_prefix_as_text() -> None:
    model = "jina-embeddings-v2-base-en"
    assert parse({"inputs": "retrieval.query: x"}, model) == [(None, ["retrieval.query: x"], [0])]


def test_prompt_name_must_be_a_task_of_the_model() -> None:
    with pytest.raises(TeiInputError, match="prompt_name"):
        parse({"inputs": ["x"], "prompt_name": "query"})
    assert parse({"inputs": ["x"], "prompt_name": "retrieval.query"})[0][0] == "retrieval.query"


def test_the_answer_is_a_bare_array_and_errors_are_one_line() -> None:
    assert orjson.loads(render_embed([b"[0.5,1.0]", b"[2.0]"])) == [[0.5, 1.0], [2.0]]
    assert orjson.loads(render_error("two\nlines", "empty")) == {
        "error": "two lines",
        "error_type": "empty",
    }
