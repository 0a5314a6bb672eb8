"""``python -m embedcache.testing``: run the Jina emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence

from .emulator import JinaEmulator
from .limits import RateLimits
from .vectors import FLOAT_STYLES


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, serve, print the URL, block until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m embedcache.testing",
        description="Serve a local emulator of the Jina embeddings API (POST /v1/embeddings).",
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
        )
        try:
            emulator.start()
        except OSError as exc:
            shown = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
            parser.exit(1, f"{parser.prog}: cannot listen on {shown}: {exc.strerror or exc}\n")
        try:
            print(emulator.url, flush=True)  # alone on stdout, so scripts can read it
            print("Jina emulator running; press Ctrl-C to stop", file=sys.stderr, flush=True)
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
