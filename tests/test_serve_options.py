"""``embedcache serve``'s options as the proxy receives them, without serving: the server loop
is replaced by one that builds a worker's proxy and keeps its settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from embedcache.cli.main import main
from embedcache.proxy import server
from embedcache.proxy.app import Proxy, ProxySettings
from embedcache.proxy.metrics import Board

Serve = Callable[..., tuple[int, str, ProxySettings | None]]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Serve:
    """Run ``embedcache serve ARGS``; its exit code, output, and the settings of the proxy
    it would have served (``None``: it stopped before serving)."""

    def run(*args: str) -> tuple[int, str, ProxySettings | None]:
        built: list[ProxySettings] = []

        def serve_forever(make_proxy: Callable[[Board, int], Proxy], **_: Any) -> None:
            proxy = make_proxy(Board(1), 0)
            built.append(proxy.settings)
            proxy.close()

        monkeypatch.setattr(server, "serve_forever", serve_forever)
        cache = ["--cache-dir", str(tmp_path / "cache")]
        result = CliRunner().invoke(main, [*cache, "serve", "--offline", *args])
        return result.exit_code, result.output, built[0] if built else None

    return run


def test_rendered_memory_sets_the_memory_for_answers_text(serve: Serve) -> None:
    code, output, settings = serve("--rendered-memory", "1MiB")
    assert code == 0, output
    assert settings is not None
    assert settings.rendered_bytes == 1024 * 1024
    code, output, settings = serve("--rendered-memory", "0")
    assert settings is not None
    assert settings.rendered_bytes == 0


def test_the_old_memory_flag_still_works_with_a_warning_naming_the_new_one(serve: Serve) -> None:
    code, output, settings = serve("--memory", "2MiB")
    assert code == 0, output
    assert "--memory is now --rendered-memory" in output
    assert settings is not None
    assert settings.rendered_bytes == 2 * 1024 * 1024


def test_a_bad_memory_size_names_the_flag_given_and_both_flags_are_refused(serve: Serve) -> None:
    for flag in ("--rendered-memory", "--memory"):
        code, output, settings = serve(flag, "12")
        assert (code, settings) == (2, None)
        assert f"Invalid value for {flag}" in output
    code, output, settings = serve("--memory", "1MiB", "--rendered-memory", "2MiB")
    assert (code, settings) == (2, None)
    assert "give one" in output
