"""Telling the upstream's float text style from the float64 values a JSON parser reads, and
the one object a client learns it into and the proxy reads it from."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from embedcache.errors import ResponseFormatError
from embedcache.upstream.float_style import (
    DEFAULT_FLOAT_STYLE,
    SAMPLE_VALUES,
    FloatStyle,
    classify_floats,
)

VALUES = np.random.default_rng(14).standard_normal(1024).astype(np.float32)


def parsed(text_values: list[float]) -> np.ndarray:
    """What a float client holds: the JSON text of ``text_values``, parsed into float64."""
    return np.asarray(json.loads(json.dumps(text_values)), dtype=np.float64)


def float64_text(vector: np.ndarray) -> np.ndarray:
    return parsed([float(value) for value in vector])


def float32_text(vector: np.ndarray) -> np.ndarray:
    return parsed([float(str(value)) for value in vector])


def test_float64_round_trip_digits_show_the_float64_style() -> None:
    assert classify_floats([float64_text(VALUES)]) == "float64"


def test_shortest_float32_digits_show_the_float32_style() -> None:
    assert classify_floats([float32_text(VALUES)]) == "float32"


@pytest.mark.parametrize(
    "values",
    [[0.5, 0.25, -1.0, 0.0, 0.125, 3.0], [], [float("nan"), float("inf"), 0.5]],
    ids=["both-styles-write-them-alike", "empty", "only-non-finite-and-alike"],
)
def test_values_both_styles_write_alike_tell_nothing(values: list[float]) -> None:
    assert classify_floats([np.asarray(values, dtype=np.float64)]) is None


def test_the_sample_runs_across_rows_in_order() -> None:
    alike = np.asarray([0.5, 0.25], dtype=np.float64)
    assert classify_floats([alike, float32_text(VALUES[:4])]) == "float32"
    assert classify_floats([alike, float64_text(VALUES[:4])]) == "float64"


def test_one_value_with_float64_digits_among_shortest_ones_shows_the_float64_style() -> None:
    # The first rule of the reference's §12: a value that differs from its shortest
    # float32 text was written with float64's digits.
    mixed = float32_text(VALUES)
    mixed[7] = float(VALUES[7])
    assert classify_floats([mixed]) == "float64"


def test_non_finite_values_are_left_out() -> None:
    values = float32_text(VALUES[:8])
    values[0] = float("nan")
    values[1] = float("-inf")
    assert classify_floats([values]) == "float32"


@pytest.mark.parametrize(
    "value",
    [0.1234567890123, 1 / 3, 1e39, -3.5e38],
    ids=["too-many-digits", "a-float64-value", "beyond-float32", "beyond-float32-negative"],
)
def test_a_value_that_is_not_a_float32_value_is_a_format_error(value: float) -> None:
    values = float64_text(VALUES[:8])
    values[3] = value
    with pytest.raises(ResponseFormatError, match="not a float32 value"):
        classify_floats([values])


def test_only_the_first_sample_of_values_is_checked_one_by_one() -> None:
    # A learning answer can hold 2048 vectors: checking every value (about a microsecond
    # each, under the GIL) would stall the proxy's event loop for seconds.
    values = np.concatenate([float64_text(VALUES)] * (SAMPLE_VALUES // len(VALUES) + 1))
    values[SAMPLE_VALUES + 1] = 0.1234567890123
    assert classify_floats([values]) == "float64"
    values[SAMPLE_VALUES - 1] = 0.1234567890123
    with pytest.raises(ResponseFormatError):
        classify_floats([values])


def test_both_styles_read_back_as_the_same_float32_values() -> None:
    assert float64_text(VALUES).astype(np.float32).tobytes() == VALUES.tobytes()
    assert float32_text(VALUES).astype(np.float32).tobytes() == VALUES.tobytes()


def test_the_style_is_learned_once_while_learning_and_the_first_answer_decides() -> None:
    style = FloatStyle()
    assert not style.active  # off until asked
    style.learned("float32")
    assert (style.learned_here, style.current) == (None, DEFAULT_FLOAT_STYLE)
    style.start()
    assert style.active
    style.learned("float32")
    style.learned("float64")  # a concurrent answer, arriving second
    assert (style.learned_here, style.current, style.active) == ("float32", "float32", False)
    style.start()
    assert not style.active  # nothing left to learn
    with pytest.raises(ValueError, match="float16"):
        style.learned("float16")


def test_giving_up_stops_learning_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    style = FloatStyle()
    style.start()
    with caplog.at_level(logging.WARNING, logger="embedcache"):
        style.give_up("not float32 values")
        style.give_up("again")
    assert (style.learned_here, style.active, style.current) == (None, False, "float64")
    assert [record.getMessage().count("not float32 values") for record in caplog.records] == [1]


def test_an_adopted_style_is_written_until_this_process_learns_its_own() -> None:
    style = FloatStyle()
    assert not style.known
    style.adopt(None)  # the directory holds none
    style.adopt("float16")  # nor anything this version writes
    assert (style.current, style.known) == (DEFAULT_FLOAT_STYLE, False)
    style.adopt("float32")
    assert (style.current, style.known, style.learned_here) == ("float32", True, None)
    style.start()
    style.learned("float64")
    assert style.current == "float64"


def test_what_one_forked_process_learns_the_others_write_at_once() -> None:
    shared, own = FloatStyle(across_fork=True), FloatStyle()
    pid = os.fork()
    if pid == 0:  # the other worker: learns, and leaves at once
        for style in (shared, own):
            style.start()
            style.learned("float32")
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert (shared.current, shared.known, shared.learned_here) == ("float32", True, None)
    assert (own.current, own.known) == (DEFAULT_FLOAT_STYLE, False)
