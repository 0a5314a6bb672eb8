"""``embedcache demo``: the offline tour against the bundled emulator."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from ..config import DEFAULT_MODEL
from .options import CliContext, Command, pass_cli

__all__ = ["DEMO_API_KEY", "demo"]

DEMO_DOCUMENTS = [
    "Milvus is an open-source vector database built for similarity search.",
    "Late chunking embeds a whole document first and pools each chunk afterwards.",
    "A content-addressed cache keys every vector by a hash of its request and text.",
    "Re-running a retrieval experiment should not pay for the same embeddings twice.",
    "Matryoshka embeddings can be truncated to fewer dimensions and still work.",
    "Milvus is an open-source vector database built for similarity search.",
    "Ein Satz auf Deutsch, damit nicht alles Englisch ist.",
    "埋め込みベクトルはディスクにキャッシュされます。",
]
# Not a real key: the emulator accepts only this one, and it proves keys stay off disk.
DEMO_API_KEY = "jina_demo_key_for_the_bundled_emulator_only"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


@click.command(
    cls=Command,
    # The global option, with the demo's own default: a configured cache is left alone.
    global_help={
        "cache_dir": "Cache directory to use and keep (default: a temporary one, removed "
        "afterwards; $EMBEDCACHE_DIR is not used)."
    },
)
@pass_cli
def demo(cli: CliContext) -> None:
    """Show the cache at work, offline, against the bundled Jina API emulator.

    Embeds a few documents twice: the first pass goes to the emulator, the second is
    served from disk with no request and no tokens.
    """
    import numpy as np

    from ..integrations.milvus import JinaEmbeddingFunction
    from ..testing import JinaEmulator

    with (
        tempfile.TemporaryDirectory(prefix="embedcache-demo-") as tmp,
        JinaEmulator(api_key=DEMO_API_KEY) as emulator,
    ):
        directory = cli.cache_dir or Path(tmp) / "cache"
        click.echo(f"Jina API emulator at {emulator.url}; cache at {directory}")
        click.echo(f"{len(DEMO_DOCUMENTS)} documents, {len(set(DEMO_DOCUMENTS))} distinct\n")

        def run(title: str) -> tuple[np.ndarray[Any, Any], int, int]:
            before = len(emulator.requests)
            with JinaEmbeddingFunction(
                DEFAULT_MODEL, api_key=DEMO_API_KEY, base_url=emulator.url, cache_dir=directory
            ) as ef:
                vectors = np.stack(ef.encode_documents(DEMO_DOCUMENTS))
                stats = ef.stats
            sent = emulator.requests[before:]
            tokens = sum(r.tokens for r in sent)
            click.secho(title, bold=True)
            for request in sent:
                body = request.body or {}
                fields = ", ".join(f"{k}={body[k]}" for k in sorted(body) if k != "input")
                click.echo(
                    f"  sent upstream: POST {request.path} with {request.inputs} texts "
                    f"({fields}) -> HTTP {request.status}, {request.tokens} tokens"
                )
            click.echo(
                f"  {_count(len(sent), 'request')}, {_count(tokens, 'token')} upstream; "
                f"{_count(stats.hits, 'hit')} and {_count(stats.misses, 'miss')} "
                "(distinct texts)"
            )
            click.echo(f"  vectors: {vectors.shape[0]} x {vectors.shape[1]} float32\n")
            return vectors, len(sent), tokens

        first, _, _ = run("First pass (cold cache):")
        second, requests, tokens = run("Second pass (a fresh JinaEmbeddingFunction):")
        identical = np.array_equal(first.view(np.uint32), second.view(np.uint32))
        if not identical or requests:
            raise click.ClickException(
                f"demo failed: second pass sent {requests} requests, "
                f"vectors {'identical' if identical else 'differ'}"
            )
        click.echo(
            f"Second pass served from disk: bit-identical vectors, {requests} requests, "
            f"{tokens} tokens."
        )
