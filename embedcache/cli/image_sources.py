"""Images and PDFs to prewarm: files, folders of them, and lists of paths and URLs.

``embedcache prewarm --images PATH...`` takes image files and folders (their image files, by
name, recursively), and ``--images-from LIST`` a text file naming one path, folder or
``http(s)`` URL a line (``-``: standard input); ``--pdfs`` and ``--pdfs-from`` the same for
PDFs. Every file is read and checked here, a window at a time (:func:`media_windows`), so a
file that is not an image, cannot be read or is over the API's 8 MB is refused by name
before anything is sent, and memory follows the window, not the folder.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

import click

from ..errors import InvalidInputError
from ..inputs import MAX_MEDIA_BYTES, Media, image_size, media_bytes, media_url
from ..models import MODELS, RequestOptions

__all__ = [
    "MEDIA_SUFFIXES",
    "WINDOW_BYTES",
    "MediaSource",
    "check_model",
    "listed_sources",
    "media_kind",
    "media_windows",
    "path_sources",
]

#: The file names a folder's images (and PDFs) are taken by; a file named on its own is
#: taken whatever its name, and checked by its content.
MEDIA_SUFFIXES = {
    "image": (".png", ".jpg", ".jpeg", ".gif", ".webp"),
    "pdf": (".pdf",),
}
#: Most bytes of images a window holds (besides ``--window``'s count): a folder of 8 MB
#: photos must not fill memory twenty thousand at a time.
WINDOW_BYTES = 64 * 2**20
_NOUNS = {"image": "image", "pdf": "PDF"}
# What the API takes, said in a message about a file it would not.
_FORMATS = {"image": "a PNG, JPEG, GIF or WEBP image", "pdf": "a PDF"}


@dataclass(frozen=True)
class MediaSource:
    """One image or PDF to embed, not read yet.

    :ivar kind: ``"image"`` or ``"pdf"``.
    :ivar location: the file's path, or the URL.
    :ivar origin: where it was named, for messages: the path, or ``LIST:line``.
    :ivar is_url: whether ``location`` is a URL (the API fetches it).
    """

    kind: str
    location: str
    origin: str
    is_url: bool = False

    def load(self) -> Media:
        """The :class:`~embedcache.inputs.Media` to embed: a URL as it is, a file read and
        checked.

        :raises InvalidInputError: naming the file (or list line): unreadable, empty, over
            8 MB, or not of its kind by its first bytes.
        """
        if self.is_url:
            return media_url(self.kind, self.location, self.origin)
        where = self.origin if self.origin == self.location else f"{self.origin} ({self.location})"
        try:
            with open(self.location, "rb") as handle:
                # One byte past the limit tells an oversized file without reading all of it.
                data = handle.read(MAX_MEDIA_BYTES + 1)
        except OSError as exc:
            raise InvalidInputError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        if len(data) > MAX_MEDIA_BYTES:
            size = os.stat(self.location).st_size
            raise InvalidInputError(
                f"{where}: {size:,} bytes, over the API's limit of {MAX_MEDIA_BYTES:,}"
            )
        media = media_bytes(self.kind, data, where)
        known = image_size(data) is not None if self.kind == "image" else data[:5] == b"%PDF-"
        if not known:
            raise InvalidInputError(f"{where}: not {_FORMATS[self.kind]}")
        return media


def check_model(options: RequestOptions, kind: str, flag: str) -> None:
    """Refuse, naming ``flag``, a model that does not take ``kind`` (a model embedcache
    does not know may: the API decides), or late chunking (texts only).

    :raises InvalidInputError: saying which models do.
    """
    noun = _NOUNS[kind]
    if options.late_chunking:
        raise InvalidInputError(f"{flag}: late chunking takes texts only, not {noun}s")
    spec = options.spec
    if spec is not None and kind not in spec.inputs:
        takers = ", ".join(name for name, s in MODELS.items() if kind in s.inputs)
        raise InvalidInputError(
            f"{flag}: {spec.name} does not take {noun}s; choose a model that does with "
            f"--model ({takers})"
        )


def path_sources(
    paths: Iterable[str], kind: str, origin: str | None = None
) -> Iterator[MediaSource]:
    """The files of ``paths``: a file as it is, a folder's files named as ``kind``
    (:data:`MEDIA_SUFFIXES`, any case), recursively, each folder's files in sorted order
    before its subfolders in sorted order; hidden files and folders (``.name``) skipped.

    :param origin: where the paths were named (``LIST:line``), for messages; ``None``: the
        path itself.
    :raises InvalidInputError: a path that does not exist.
    """
    suffixes = MEDIA_SUFFIXES[kind]
    for path in paths:
        named = origin or path
        if path == "-" and origin is None:
            raise InvalidInputError(
                f"- (standard input) is not a folder or file of {_NOUNS[kind]}s; "
                f"--{kind}s-from - reads a list of them from it"
            )
        if os.path.isdir(path):
            yield from _folder(path, kind, suffixes)
        elif os.path.exists(path):
            yield MediaSource(kind, path, named)
        else:
            where = named if named == path else f"{named} ({path})"
            raise InvalidInputError(f"{where}: no such file or folder")


def media_kind(
    files: tuple[str, ...],
    images: bool,
    images_from: tuple[str, ...],
    pdfs: bool,
    pdfs_from: tuple[str, ...],
    fmt: str | None,
    group_field: str | None,
) -> str | None:
    """What a prewarm embeds: ``"image"``, ``"pdf"``, or ``None`` for texts; its flags
    checked against each other and FILES.

    :raises click.UsageError: flags of both kinds, a list beside FILES read as texts, a
        text file's option with images, or no input at all.
    """
    image, pdf = images or bool(images_from), pdfs or bool(pdfs_from)
    if image and pdf:
        raise click.UsageError("a prewarm embeds images or PDFs, not both: run it once for each")
    if not (image or pdf):
        if not files:
            raise click.UsageError("give FILES to read texts from, or --images / --images-from")
        for path in files:
            if os.path.isdir(path):
                raise click.UsageError(
                    f"{path} is a folder; FILES are text files (add --images to embed a "
                    "folder's images)"
                )
        return None
    flag, listed = ("--images", images_from) if image else ("--pdfs", pdfs_from)
    if files and not (images or pdfs):
        raise click.UsageError(
            f"FILES are read as texts without {flag}: add {flag} to embed them too, or "
            "prewarm texts in a run of their own"
        )
    if not files and not listed:
        raise click.UsageError(f"{flag} needs FILES (files or folders) to embed")
    for name, given in (("--format", fmt), ("--group-field", group_field)):
        if given is not None:
            raise click.UsageError(f"{name} is about text files; {flag} reads files whole")
    return "image" if image else "pdf"


def _folder(root: str, kind: str, suffixes: tuple[str, ...]) -> Iterator[MediaSource]:
    # os.walk streams a folder at a time: a tree of millions of files is never listed whole.
    # Hidden names are skipped, as file finders do: macOS leaves "._photo.jpg" metadata
    # beside every photo copied to a foreign disk, named as an image and not one.
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if name.lower().endswith(suffixes) and not name.startswith("."):
                path = os.path.join(folder, name)
                yield MediaSource(kind, path, path)


def listed_sources(path: str, kind: str, copy: TextIO | None = None) -> Iterator[MediaSource]:
    """The images (or PDFs) the list at ``path`` (``-``: standard input) names, one a line:
    an ``http(s)`` URL, a file, or a folder (as :func:`path_sources`); relative paths are
    from the current directory, as ``tar -T`` reads them. Blank lines and lines starting
    with ``#`` are skipped. ``copy``, when given, is read in its place (a copy of standard
    input or of a pipe, for a second reading: :class:`~embedcache.cli.sources.Spool`).

    :raises InvalidInputError: naming ``LIST:line`` for a URL of another scheme or a path
        that does not exist, or the list when it is not UTF-8 text.
    """
    name = "<stdin>" if path == "-" else path
    with contextlib.ExitStack() as stack:
        lines = copy or (
            sys.stdin if path == "-" else stack.enter_context(open(path, encoding="utf-8"))
        )
        try:
            yield from _listed(lines, name, kind)
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{name}: not UTF-8 text ({exc.reason})") from None


def _listed(lines: Iterable[str], name: str, kind: str) -> Iterator[MediaSource]:
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        origin = f"{name}:{number}"
        if "://" in entry:
            media_url(kind, entry, origin)  # refused now, not once the window is read
            yield MediaSource(kind, entry, origin, is_url=True)
        else:
            yield from path_sources([entry], kind, origin)


def media_windows(
    sources: Iterable[MediaSource], size: int, max_bytes: int | None = None
) -> Iterator[list[Media]]:
    """``sources`` read, ``size`` at a time or fewer: a window closes once its files hold
    ``max_bytes`` (default :data:`WINDOW_BYTES`; a URL holds none)."""
    max_bytes = WINDOW_BYTES if max_bytes is None else max_bytes
    window: list[Media] = []
    held = 0
    for source in sources:
        media = source.load()
        window.append(media)
        held += len(media.data) if media.data is not None else 0
        if len(window) >= size or held >= max_bytes:
            yield window
            window, held = [], 0
    if window:
        yield window
