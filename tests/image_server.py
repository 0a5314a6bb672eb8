"""A loopback HTTP server of images (or anything) for tests: what the emulator and
embedcache fetch when an image is given by URL."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ImageServer:
    """A loopback HTTP server of fixed answers: ``routes[path] = (status, body)``;
    ``/slow`` drips bytes for as long as the client reads."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                with contextlib.suppress(OSError):  # the emulator may hang up early
                    if self.path == "/slow":
                        self.send_response(200)
                        self.send_header("Content-Length", "100000")
                        self.end_headers()
                        for _ in range(100):
                            self.wfile.write(b"\x89PNG\r\n\x1a\n"[:1] * 1000)
                            self.wfile.flush()
                            time.sleep(0.1)
                        return
                    status, body = routes.get(self.path, (404, b"not here"))
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def serve(self, path: str, body: bytes, status: int = 200) -> str:
        self.routes[path] = (status, body)
        return self.url + path

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
