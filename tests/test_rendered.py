"""RenderedAnswers: the proxy's memory of served embeddings' text."""

from __future__ import annotations

from embedcache.proxy.rendered import RenderedAnswers, variant

KEY_A, KEY_B, KEY_C = b"a" * 16, b"b" * 16, b"c" * 16


def test_all_or_nothing_a_missing_key_means_no_answer() -> None:
    kept = RenderedAnswers(1 << 20)
    kept.put([KEY_A], b"d", [b"[0.5]"], [3.0])
    assert kept.get_all([KEY_A], b"d") == [(b"[0.5]", 3.0)]
    assert kept.get_all([KEY_A, KEY_B], b"d") is None


def test_each_encoding_and_float_style_is_kept_apart() -> None:
    kinds = {variant("base64", "float64"), variant("float", "float64"), variant("float", "float32")}
    assert len(kinds) == 3
    assert variant("base64", "float64") == variant("base64", "float32")
    kept = RenderedAnswers(1 << 20)
    kept.put([KEY_A], variant("float", "float64"), [b"[0.5]"], [1.0])
    assert kept.get_all([KEY_A], variant("float", "float32")) is None
    assert kept.get_all([KEY_A], variant("base64", "float64")) is None


def test_the_budget_evicts_the_least_recently_used_first() -> None:
    text = b"x" * 400
    kept = RenderedAnswers(2 * (len(text) + 120))  # room for two
    kept.put([KEY_A, KEY_B], b"d", [text, text], [1.0, 1.0])
    assert kept.get_all([KEY_A], b"d") is not None  # A is now the most recent
    kept.put([KEY_C], b"d", [text], [1.0])
    assert kept.get_all([KEY_B], b"d") is None
    assert kept.get_all([KEY_A, KEY_C], b"d") is not None
    assert kept.bytes_held <= kept.max_bytes


def test_a_budget_of_zero_keeps_nothing_and_clear_forgets_everything() -> None:
    none = RenderedAnswers(0)
    none.put([KEY_A], b"d", [b"[1]"], [1.0])
    assert len(none) == 0
    kept = RenderedAnswers(1 << 20)
    kept.put([KEY_A, KEY_A], b"d", [b"[1]", b"[1]"], [1.0, 1.0])  # a repeated input
    assert len(kept) == 1
    kept.clear()
    assert (len(kept), kept.bytes_held) == (0, 0)
