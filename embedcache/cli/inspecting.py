"""``embedcache inspect``: whether one text, image or PDF (or a key) is cached under given
settings, and what its entry holds: a vector, or a payload's kind, shape, dtype and bytes."""

from __future__ import annotations

import json

import click

from ..cache_keys import fingerprint, group_keys, text_keys
from ..config import resolve_upstream_id
from ..inputs import load_media
from .image_sources import check_model
from .options import (
    LOCAL_ONLY,
    SENDS_NOTHING,
    CliContext,
    Command,
    build_options,
    echo_json,
    json_option,
    pass_cli,
    request_options,
)
from .output import describe_entry
from .units import format_time

__all__ = ["inspect"]


@click.command(cls=Command, ignores={**SENDS_NOTHING, **LOCAL_ONLY})
@click.argument("text", required=False)
@click.option("--key", "key_hex", help="Look up a key (32 hex digits) instead of a text.")
@click.option(
    "--image",
    help="Look up an image instead of a text: a file's path (keyed by its bytes) or an "
    "http(s) URL (keyed as written), as prewarm --images and encode_images key them.",
)
@click.option("--pdf", help="Look up a PDF instead of a text, as --image.")
@request_options
@json_option
@pass_cli
def inspect(
    cli: CliContext,
    text: str | None,
    key_hex: str | None,
    image: str | None,
    pdf: str | None,
    model: str,
    task: str,
    dimensions: int | None,
    late_chunking: bool,
    truncate: bool,
    as_json: bool,
) -> None:
    """Whether TEXT (or an --image, a --pdf) is cached under the given settings, with its
    metadata: a vector's length, or what a payload holds (multi-vector rows, packed bits).

    With --late-chunking, TEXT is looked up as a group of one.
    """
    given = [value is not None for value in (text, key_hex, image, pdf)]
    if sum(given) != 1:
        raise click.UsageError("give one of TEXT, --key, --image or --pdf")
    if key_hex is not None:
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise click.BadParameter("not hexadecimal", param_hint="--key") from None
    else:
        options = build_options(model, task, dimensions, late_chunking, truncate)
        fp = fingerprint(options, resolve_upstream_id(cli.base_url, cli.upstream_as))
        if text is not None:
            key = (group_keys if late_chunking else text_keys)(fp, [text])[0]
        else:
            kind, flag, value = (
                ("image", "--image", image) if pdf is None else ("pdf", "--pdf", pdf)
            )
            check_model(options, kind, flag)
            key = text_keys(fp, [load_media(value, flag, kind)])[0]
    store = cli.open(existing=True).store
    record = store.get_many([key])[0]
    fp_of = store.fingerprints().get(record.fingerprint_id) if record else None
    settings = fp_of.fields if fp_of is not None else {}
    info = {
        "key": key.hex(),
        "cached": record is not None,
        **(
            {
                "request": settings,
                "upstream": fp_of.upstream if fp_of is not None else "?",
                "input": fp_of.input if fp_of is not None else "?",
                "output": fp_of.output if fp_of is not None else "?",
                "dimensions": record.dimensions,
                "kind": record.kind,
                "shape": list(record.vector.shape),
                "dtype": str(record.vector.dtype),
                "bytes": record.vector.nbytes,
                "tokens": round(record.tokens, 3),
                "created": record.created,
            }
            if record
            else {}
        ),
    }
    if as_json:
        echo_json(info)
        return
    click.echo(f"key      {key.hex()}")
    if record is None:
        click.echo("cached   no")
        return
    click.echo("cached   yes")
    click.echo(f"request  {json.dumps(settings, sort_keys=True)}")
    click.echo(f"upstream {fp_of.upstream if fp_of is not None else '?'}")
    click.echo(f"made of  {info['input']}, holding {info['output']}")
    array = record.vector
    data = describe_entry(record.kind, array.shape, str(array.dtype), array.nbytes)
    label = "vector  " if record.kind == "vector" else "payload "
    click.echo(f"{label} {data}, {record.tokens:.1f} tokens attributed")
    click.echo(f"created  {format_time(record.created)}")
