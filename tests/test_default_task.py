"""The task sent when none is chosen follows the model, in the library and the CLI (issue 22,
defect 8: ``--model jina-clip-v2`` without ``--task`` failed with "unknown task
'retrieval.passage'", a task clip-v2 does not take)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from embedcache import JinaEmbeddingFunction
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, invoke, ok
from .conftest import API_KEY

MakeEF = Callable[..., JinaEmbeddingFunction]

#: Each model's task when none is chosen: its document task, none where it has no such task.
DEFAULTS = [
    ("jina-embeddings-v3", "retrieval.passage"),
    ("jina-clip-v2", None),  # its one task, retrieval.query, is for queries
    ("jina-embeddings-v2-base-en", None),
    ("jina-code-embeddings-0.5b", "nl2code.passage"),
]


def sent_task(emulator: JinaEmulator) -> object:
    body = emulator.requests[-1].body
    assert body is not None
    return body.get("task")


def test_jina_embedding_function_without_a_task_sends_the_models_own(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    for model, task in DEFAULTS:
        ef = make_ef(model)
        assert ef.task == task, model
        ef(["a text"])
        assert sent_task(emulator) == task, model
        assert make_ef(model, task=None).task is None  # None still sends no task


def test_cli_commands_without_task_use_the_models_own(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    def run(*args: str) -> Result:
        return invoke(*args, cache_dir=cache_dir, base_url=emulator.url, key=API_KEY)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a text\n", encoding="utf-8")
    for model, task in DEFAULTS:
        sent = len(emulator.requests)
        report = as_json(run("prewarm", str(corpus), "--model", model, "--json"))
        assert report["fetched"] == 1, model
        assert sent_task(emulator) == task, model
        # get and inspect key the text the same way: it is cached; nothing more is sent.
        ok(run("get", "a text", "--model", model, "--offline"))
        info = as_json(run("inspect", "a text", "--model", model, "--json"))
        assert info["cached"] is True
        assert info["request"].get("task") == task
        assert len(emulator.requests) == sent + 1
