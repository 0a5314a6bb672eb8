"""PDFs as the emulator sees them: a ``%PDF`` header, a page count, the tokens they cost, and
small valid PDFs for tests.

The emulator does not render PDFs. Its rules, all choices (the sources give no usage figure
for PDFs):

- the bytes must start with ``%PDF-``;
- the page count is the number of page objects, ``/Type /Page`` (spaces optional, and not
  ``/Type /Pages``, the page tree), at least 1;
- each page costs what one 512x512 image tile costs on jina-embeddings-v4: 4,000 tokens
  (reported as ``usage.image_tokens``, since the model sees each page as an image).

>>> pdf_pages(pdf(3, seed=7))
3
>>> pdf_tokens(pdf(3, seed=7))
12000
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["PDF_MAGIC", "TOKENS_PER_PAGE", "pdf", "pdf_pages", "pdf_tokens"]

PDF_MAGIC = b"%PDF-"
#: Usage tokens per page (one 512x512 tile of jina-embeddings-v4).
TOKENS_PER_PAGE = 4000

_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def pdf_pages(data: bytes) -> int:
    """The number of page objects in ``data``, at least 1.

    :raises ValueError: when ``data`` does not start with ``%PDF-``.
    """
    if not data.startswith(PDF_MAGIC):
        raise ValueError("not a PDF (it does not start with %PDF-)")
    return max(1, len(_PAGE.findall(data)))


def pdf_tokens(data: bytes) -> int:
    """Usage tokens of a PDF: :data:`TOKENS_PER_PAGE` for each page (:func:`pdf_pages`).

    :raises ValueError: when ``data`` is not a PDF.
    """
    return pdf_pages(data) * TOKENS_PER_PAGE


def pdf(pages: int, seed: int = 0) -> bytes:
    """A small, well-formed PDF of ``pages`` empty pages, the same bytes for the same
    arguments; ``seed`` is written into its ``/Info`` title, so two seeds differ.

    :raises ValueError: fewer than 1 page.
    """
    if pages < 1:
        raise ValueError(f"a PDF needs at least 1 page, got {pages}")
    title = np.random.default_rng(seed).integers(0, 1 << 62)
    kids = " ".join(f"{4 + page} 0 R" for page in range(pages))
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>",
        f"<< /Title (embedcache test {title}) >>",
        *("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>" for _ in range(pages)),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("ascii")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode("ascii")
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode("ascii")
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 3 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode("ascii")
    return bytes(out)
