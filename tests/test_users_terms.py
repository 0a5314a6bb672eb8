"""A missing API key is said in the terms of the surface it reaches: the library names its
``api_key=`` argument, the CLI the environment variables, the proxy the
``Authorization: Bearer`` header its clients send (and, behind ``--token``, the token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedcache import JinaEmbeddingFunction
from embedcache.errors import AuthenticationError
from embedcache.testing import JinaEmulator

from .cli_helpers import invoke, one_line_error
from .conftest import API_KEY, MakeProxy
from .serving import Served

V3 = "jina-embeddings-v3"
VARIABLES = ("JINAAI_API_KEY", "JINA_API_KEY")


def test_the_library_names_api_key_and_carries_the_variables(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    with (
        JinaEmbeddingFunction(base_url=emulator.url, cache_dir=cache_dir) as ef,
        pytest.raises(AuthenticationError) as raised,
    ):
        ef.embed(["no key anywhere"])
    assert (
        str(raised.value) == "no Jina API key: pass api_key= or set JINAAI_API_KEY or JINA_API_KEY"
    )
    assert raised.value.variables == VARIABLES  # the fact each surface words its own way


def test_the_cli_names_the_variables_and_no_python_argument(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    result = invoke("get", "no key anywhere", cache_dir=cache_dir, base_url=emulator.url)
    error = one_line_error(result)
    assert (
        error == "Error: AuthenticationError: no Jina API key: set JINAAI_API_KEY (or JINA_API_KEY)"
    )
    assert "api_key" not in result.output
    assert emulator.requests == []


def test_a_refused_key_is_still_the_apis_own_words_in_the_cli(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    result = invoke("get", "x", cache_dir=cache_dir, base_url=emulator.url, key="jina_wrong")
    assert "AUTH_INVALID_API_KEY" in one_line_error(result)


@pytest.mark.parametrize("dialect", ["jina", "openai", "tei"])
def test_the_proxys_401_without_any_key_names_the_authorization_header(
    make_proxy: MakeProxy, emulator: JinaEmulator, dialect: str
) -> None:
    proxy = make_proxy()  # no server key, open policy: the client's key would pay
    status, message = _refused(proxy, dialect, ["no key anywhere"])
    assert status == 401
    assert "send yours in the Authorization: Bearer header" in message
    assert "JINAAI_API_KEY or JINA_API_KEY is not set where embedcache serve runs" in message
    assert "api_key" not in message
    assert emulator.requests == []


def test_behind_a_token_the_401_for_a_missing_server_key_names_the_token_and_variables(
    make_proxy: MakeProxy, emulator: JinaEmulator
) -> None:
    token = "local-proxy-token"
    proxy = make_proxy(env={"EMBEDCACHE_PROXY_TOKEN": token})  # a token, and no server key
    answer = proxy.embed({"model": V3, "input": ["the server pays"]}, token)
    assert answer.status_code == 401
    detail = answer.json()["detail"]
    assert "start embedcache serve with JINAAI_API_KEY or JINA_API_KEY set" in detail
    assert "clients send the proxy's token in the Authorization: Bearer header" in detail
    assert "api_key" not in detail
    assert emulator.requests == []


def test_an_allowlisting_proxys_401_without_a_key_names_the_authorization_header(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{API_KEY}\n", encoding="utf-8")
    proxy = make_proxy("--allow-keys", str(keys))
    keys.unlink()  # the suite's leak check scans the disk for the key
    answer = proxy.embed({"model": V3, "input": ["who are you?"]})
    assert answer.status_code == 401
    assert "send yours in the Authorization: Bearer header" in answer.json()["detail"]


LONG = "word " * 20_000  # about 20,000 tokens: over jina-embeddings-v3's 8,192


def test_get_names_a_too_long_text_by_its_argument_and_the_flag(cache_dir: Path) -> None:
    line = one_line_error(invoke("get", "fine", LONG, cache_dir=cache_dir))
    assert "TEXT 2: about 20,000 tokens" in line
    assert "--truncate" in line
    assert "truncate=True" not in line
    assert "texts[" not in line


def test_get_names_a_too_long_stdin_text_by_its_line(cache_dir: Path) -> None:
    line = one_line_error(invoke("get", "-", cache_dir=cache_dir, stdin=f"a\n\n{LONG}\n"))
    assert "<stdin>:3: about" in line
    assert "--truncate" in line


@pytest.mark.parametrize("dialect", ["jina", "openai", "tei"])
def test_the_proxy_names_a_too_long_text_by_its_request_field(
    make_proxy: MakeProxy, emulator: JinaEmulator, dialect: str
) -> None:
    proxy = make_proxy()
    status, message = _refused(proxy, dialect, ["fine", LONG], API_KEY)
    assert status in (400, 413, 422)
    assert ("inputs[1]" if dialect == "tei" else "input[1]") in message
    assert "truncate" in message
    assert "texts[" not in message
    assert "truncate=True" not in message
    assert emulator.requests == []


def _refused(
    proxy: Served, dialect: str, texts: list[str], key: str | None = None
) -> tuple[int, str]:
    """The status and message of the proxy's answer to ``texts`` in ``dialect``: TEI's
    ``/embed``, or ``/v1/embeddings`` as Jina's or OpenAI's clients send it."""
    if dialect == "tei":
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answer = proxy.http.post("/embed", json={"inputs": texts}, headers=headers)
        return answer.status_code, str(answer.json()["error"])
    body: dict[str, object] = {"model": V3, "input": texts}
    if dialect == "openai":
        body["encoding_format"] = "float"
    answer = proxy.embed(body, key)
    got = answer.json()
    return answer.status_code, str(
        got["error"]["message"] if dialect == "openai" else got["detail"]
    )
