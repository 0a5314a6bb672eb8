"""``python -m embedcache.testing``: run the Jina emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from .emulator import JinaEmulator
from .limits import RateLimits
from .vectors import FLOAT_STYLES


def _banner(url: str, api_key: str | None) -> str:
    """What a person starting the emulator needs next: the variables that point embedcache
    at it, and a scratch cache so its random vectors stay out of the real one."""
    # Not the real cache: the emulator's vectors are random (never Jina's hits, as entries
    # record their upstream, but a scratch directory keeps the real one clean).
    scratch = Path(tempfile.gettempdir()) / "embedcache-emulator-cache"
    return "\n".join(
        [
            f"Jina API emulator at {url}; press Ctrl-C to stop. In another shell:",
            f"  export EMBEDCACHE_BASE_URL={url}",
            # The key given to --api-key is not echoed: keys stay out of output and logs.
            "  export JINAAI_API_KEY="
            + ("<the key given to --api-key>" if api_key else "any-key-works"),
            f"  export EMBEDCACHE_DIR={scratch}",
            "Its vectors are random per text: good for trying embedcache, not for search.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, serve, print the URL, block until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m embedcache.testing",
        description="Serve a local emulator of the Jina embeddings API (POST /v1/embeddings, "
        "and POST /v1/multi-vector for the ColBERT models).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument(
        "--api-key", default=None, help="the only bearer token accepted (default: any non-empty)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every request (default: 0)"
    )
    parser.add_argument("--rpm", type=int, help="requests per minute per key (default: no limit)")
    parser.add_argument("--tpm", type=int, help="tokens per minute per key (default: no limit)")
    parser.add_argument(
        "--concurrent-requests", type=int, help="requests in flight per key (default: any)"
    )
    parser.add_argument(
        "--float-style",
        choices=FLOAT_STYLES,
        default="float64",
        help="how float embeddings are written: float64 round-trip digits of each float32 "
        "value, or its shortest float32 digits (default: %(default)s)",
    )
    parser.add_argument(
        "--fetch-remote-images",
        action="store_true",
        help="fetch image and PDF URLs on every host, not only loopback ones (default: other "
        "hosts' images are seeded by their URL text and charged one tile)",
    )
    args = parser.parse_args(argv)
    limited = any(value is not None for value in (args.rpm, args.tpm, args.concurrent_requests))
    limits = RateLimits(rpm=args.rpm, tpm=args.tpm, concurrent_requests=args.concurrent_requests)

    done = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        # SIGTERM too, so a supervisor (or a test) stops it as cleanly as Ctrl-C does.
        previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        emulator = JinaEmulator(
            api_key=args.api_key,
            host=args.host,
            port=args.port,
            latency=args.latency,
            rate_limits=limits if limited else None,
            float_style=args.float_style,
            fetch_remote_images=args.fetch_remote_images,
        )
        try:
            emulator.start()
        except OSError as exc:
            shown = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
            parser.exit(1, f"{parser.prog}: cannot listen on {shown}: {exc.strerror or exc}\n")
        try:
            print(emulator.url, flush=True)  # alone on stdout, so scripts can read it
            print(_banner(emulator.url, args.api_key), file=sys.stderr, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while not done.wait(0.5):
                    pass
        finally:
            emulator.stop()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
