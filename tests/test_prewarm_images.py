"""``embedcache prewarm --images`` / ``--images-from`` / ``--pdfs``: a folder or list of images
(or PDFs) through the cache as texts go, with the same dry run, summary, ``--json`` and exit
codes; bad input refused by name before any request. Real emulator, real cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from embedcache import JinaEmbeddingFunction
from embedcache.cli.prewarm import Pacing
from embedcache.inputs import IMAGE_TILE_TOKENS, MAX_MEDIA_BYTES
from embedcache.testing import JinaEmulator, pdf, png

from .cli_helpers import Invoke, as_json, invoke, ok, one_line_error
from .conftest import API_KEY
from .image_server import ImageServer

CLIP = ("--model", "jina-clip-v2")


@pytest.fixture
def run(emulator: JinaEmulator, cache_dir: Path) -> Invoke:
    def bound(*args: str, stdin: str | None = None) -> Result:
        return invoke(*args, cache_dir=cache_dir, base_url=emulator.url, key=API_KEY, stdin=stdin)

    return bound


def folder(root: Path) -> list[Path]:
    """A folder of images: 640x480 (2 tiles), two 8x8 (1 tile each, one in a subfolder),
    beside files that are not images by name and hidden ones (skipped); the images in the
    order prewarm reads them."""
    (root / "sub").mkdir(parents=True)
    images = [root / "a.png", root / "b.PNG", root / "sub" / "c.png"]
    for seed, (path, size) in enumerate(zip(images, [(640, 480), (8, 8), (8, 8)], strict=True)):
        path.write_bytes(png(*size, seed=seed))
    (root / "notes.txt").write_text("not an image\n")
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata, named as an image")
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "a.png").write_bytes(png(8, 8, seed=99))
    (root / "sub" / "data.json").write_text("{}")
    return images


def test_a_folder_of_pngs_is_prewarmed_and_a_second_run_sends_nothing(
    run: Invoke,
    emulator: JinaEmulator,
    tmp_path: Path,
    make_ef: Callable[..., JinaEmbeddingFunction],
) -> None:
    images = folder(tmp_path / "photos")
    first = as_json(run("prewarm", "--images", str(tmp_path / "photos"), *CLIP, "--json"))
    assert (first["texts"], first["fetched"], first["inputs"]) == (3, 3, "images")
    assert first["tokens_spent"] == 4 * IMAGE_TILE_TOKENS  # the API's usage: 2 + 1 + 1 tiles
    sent = [item for request in emulator.requests for item in request.body["input"]]  # type: ignore[index]
    assert len(sent) == 3
    assert all(set(item) == {"image"} for item in sent)
    requests = len(emulator.requests)
    again = as_json(run("prewarm", "--images", str(tmp_path / "photos"), *CLIP, "--json"))
    assert (again["cached"], again["to_fetch"], again["requests"]) == (3, 0, 0)
    # The library finds the same entries: prewarm keyed them as encode_images does.
    make_ef("jina-clip-v2").encode_images(images)
    assert len(emulator.requests) == requests


def test_a_dry_run_counts_images_and_estimates_tokens_by_tiles(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    images = folder(tmp_path / "photos")
    copy = tmp_path / "copy.png"
    copy.write_bytes(images[0].read_bytes())  # the same image again: one entry
    result = as_json(
        run("prewarm", "--images", str(tmp_path / "photos"), str(copy), *CLIP, "--dry-run",
            "--json")
    )  # fmt: skip
    assert (result["texts"], result["unique"], result["to_fetch"]) == (4, 3, 3)
    assert result["estimated_tokens"] == 4 * IMAGE_TILE_TOKENS
    assert result["dry_run"] is True
    assert result["estimated_requests"] == 1
    text = ok(run("prewarm", "--images", str(tmp_path / "photos"), *CLIP, "--dry-run")).output
    assert "images           3 read, 3 distinct" in text
    assert "estimated tokens 16,000" in text
    assert "windows of 20,480 images or 64 MiB" in text
    assert not emulator.requests


def test_images_from_a_list_of_paths_folders_and_a_loopback_url_are_prewarmed(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path, images: ImageServer
) -> None:
    photos = folder(tmp_path / "photos")
    url = images.serve("/cat.png", png(16, 16, seed=9))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images to warm\n{photos[0]}\n\n{tmp_path / 'photos' / 'sub'}\n{url}\n")
    result = as_json(run("prewarm", "--images-from", str(listing), *CLIP, "--json"))
    assert (result["texts"], result["fetched"]) == (3, 3)
    sent = [item["image"] for request in emulator.requests for item in request.body["input"]]  # type: ignore[index]
    assert url in sent  # a URL is sent as written: the API fetches it
    requests = len(emulator.requests)
    # The same list from standard input: everything cached, nothing sent.
    again = as_json(run("prewarm", "--images-from", "-", *CLIP, "--json",
                        stdin=listing.read_text()))  # fmt: skip
    assert (again["texts"], again["cached"], again["to_fetch"]) == (3, 3, 0)
    assert len(emulator.requests) == requests


def test_pdfs_of_a_folder_are_prewarmed_one_per_request_on_v4(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    (tmp_path / "docs").mkdir()
    for seed in range(2):
        (tmp_path / "docs" / f"{seed}.pdf").write_bytes(pdf(2, seed=seed))
    args = ("prewarm", "--pdfs", str(tmp_path / "docs"), "--model", "jina-embeddings-v4")
    result = as_json(run(*args, "--json"))
    assert (result["fetched"], result["requests"], result["inputs"]) == (2, 2, "pdfs")
    assert ok(run(*args)).output.startswith("All 2 distinct PDFs (of 2 read) are cached already")


def _oversized(path: Path) -> Path:
    with open(path, "wb") as handle:  # a PNG header, then a sparse hole past the limit
        handle.write(png(8, 8))
        handle.truncate(MAX_MEDIA_BYTES + 1)
    return path


BAD_INPUTS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "not an image",
        lambda d: ["--images", str(d / "photos"), *CLIP],
        "photos/b.PNG: not a PNG, JPEG, GIF or WEBP image",
    ),
    (
        "over 8 MB",
        lambda d: ["--images", str(_oversized(d / "big.png")), *CLIP],
        f"big.png: {MAX_MEDIA_BYTES + 1:,} bytes, over the API's limit of {MAX_MEDIA_BYTES:,}",
    ),
    (
        "unreadable",
        lambda d: ["--images", str(d / "photos"), *CLIP],
        "photos/sub/c.png: cannot read it: No such file or directory",
    ),
    (
        "a text-only model",
        lambda d: ["--images", str(d / "photos")],
        "--images: jina-embeddings-v3 does not take images; choose a model that does with "
        "--model (jina-embeddings-v4, jina-clip-v1, jina-clip-v2)",
    ),
    (
        "a PDF on clip",
        lambda d: ["--pdfs", str(d / "photos"), *CLIP],
        "--pdfs: jina-clip-v2 does not take PDFs",
    ),
    (
        "a list's missing path",
        lambda d: ["--images-from", str(_written(d / "l.txt", "photos/a.png\nnope.png\n")), *CLIP],
        "l.txt:2 (nope.png): no such file or folder",
    ),
    (
        "a list's other scheme",
        lambda d: ["--images-from", str(_written(d / "l.txt", "ftp://host/x.png\n")), *CLIP],
        "l.txt:1: only http:// and https:// URLs are taken",
    ),
]


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("case", "args", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_images_fail_in_one_line_naming_the_file_before_any_request(
    run: Invoke,
    emulator: JinaEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    args: Callable[[Path], list[str]],
    message: str,
) -> None:
    images = folder(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    if case == "not an image":
        images[1].write_text("a text file named .PNG\n")
    if case == "unreadable":
        images[2].unlink()
        images[2].symlink_to(tmp_path / "gone.png")  # listed in its folder, cannot be opened
    error = one_line_error(run("prewarm", *args(tmp_path)))
    assert message in error
    assert not emulator.requests


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", "--pdfs", "x"], "a prewarm embeds images or PDFs, not both"),
        (["--images-from", "l.txt", "t.txt"], "FILES are read as texts without --images"),
        (["--images"], "--images needs FILES (files or folders) to embed"),
        (["--images", "photos", "--format", "txt"], "--format is about text files"),
        (["photos"], "photos is a folder; FILES are text files (add --images"),
        ([], "give FILES to read texts from, or --images / --images-from"),
    ],
)
def test_flags_that_do_not_fit_together_are_refused_as_usage_errors(
    run: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    folder(tmp_path / "photos")
    for name in ("x", "l.txt", "t.txt"):
        (tmp_path / name).write_text("a\n")
    assert message in one_line_error(run("prewarm", *CLIP, *args), code=2)


def test_a_big_folder_is_read_a_window_at_a_time(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory follows the window: no window holds more images than --window, nor goes on
    past the byte bound (here made small), however many the folder holds."""
    from embedcache.cli import image_sources
    from embedcache.embedding.embedder import CachedEmbedder

    (tmp_path / "many").mkdir()
    for seed in range(7):
        (tmp_path / "many" / f"{seed}.png").write_bytes(png(8, 8, seed=seed))
    sizes: list[int] = []
    warm = CachedEmbedder.warm

    def counted(self: CachedEmbedder, texts: object, *args: object, **kwargs: object) -> object:
        sizes.append(len(texts))  # type: ignore[arg-type]
        return warm(self, texts, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CachedEmbedder, "warm", counted)
    ok(run("prewarm", "--images", str(tmp_path / "many"), *CLIP, "--window", "3"))
    assert sizes == [3, 3, 1] * 2  # checked, then filled: a window at a time each
    # A window closes once its images hold the byte bound: here, after each image.
    smallest = min(path.stat().st_size for path in (tmp_path / "many").iterdir())
    monkeypatch.setattr(image_sources, "WINDOW_BYTES", smallest)
    sizes.clear()
    ok(run("prewarm", "--images", str(tmp_path / "many"), *CLIP, "--dry-run"))
    assert sizes == [1] * 7


def test_progress_and_an_empty_folder_speak_of_images(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    folder(tmp_path / "photos")
    args = ("prewarm", "--images", str(tmp_path / "photos"), *CLIP)
    result = ok(invoke(*args, cache_dir=cache_dir, base_url=emulator.url, key=API_KEY,
                       obj=Pacing(0.0)))  # fmt: skip
    assert "prewarm: 3/3 images (100%), 0 hits, 3 fetched" in result.stderr
    (tmp_path / "empty").mkdir()
    empty = ok(invoke("prewarm", "--images", str(tmp_path / "empty"), *CLIP, cache_dir=cache_dir))
    assert empty.output == "Nothing to embed: no image in the input (of 0 read).\n"
