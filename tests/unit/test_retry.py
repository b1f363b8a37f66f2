"""Tests for astrid_core.retry (spec/core.md §10 and the retry.rs tests of §12)."""

from __future__ import annotations

import itertools
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core import serde
from astrid_core.retry import RetryConfig
from astrid_core.serde import SerdeError

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "retry"


def ms(value: float) -> timedelta:
    return timedelta(milliseconds=value)


def as_ms(value: timedelta) -> int:
    return value // ms(1)


_MISSING = object()

# Non-negative durations that a timedelta holds and a Rust Duration can carry.
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10_000))
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
configs = st.builds(
    RetryConfig,
    max_attempts=st.integers(min_value=0, max_value=2**32 - 1),
    initial_delay=durations,
    max_delay=durations,
    exponential_base=finite_floats,
    jitter_factor=finite_floats,
)

# --- ports of retry.rs ----------------------------------------------------------------------


def test_delay_calculation() -> None:
    """Mirrors retry.rs::delay_calculation."""
    config = RetryConfig.new(5, ms(100), timedelta(seconds=10), 2.0)
    assert config.delay_for_attempt(0) == timedelta(0)
    assert config.delay_for_attempt(1) == ms(100)
    assert config.delay_for_attempt(2) == ms(200)
    assert config.delay_for_attempt(3) == ms(400)
    assert config.delay_for_attempt(4) == ms(800)


def test_delay_caps_at_max() -> None:
    """Mirrors retry.rs::delay_caps_at_max."""
    config = RetryConfig.new(10, ms(100), ms(500), 2.0)
    assert config.delay_for_attempt(5) == ms(500)
    assert config.delay_for_attempt(10) == ms(500)


def test_should_retry_logic() -> None:
    """Mirrors retry.rs::should_retry_logic."""
    config = RetryConfig.new(3, ms(100), timedelta(seconds=1), 2.0)
    assert config.should_retry(0)
    assert config.should_retry(1)
    assert config.should_retry(2)
    assert not config.should_retry(3)
    assert not config.should_retry(4)


def test_no_retry_config() -> None:
    """Mirrors retry.rs::no_retry_config."""
    config = RetryConfig.no_retry()
    assert not config.should_retry(0)
    assert list(config.delays()) == []


def test_jitter_application() -> None:
    """Mirrors retry.rs::jitter_application."""
    config = RetryConfig.network()
    base = config.delay_for_attempt(1)
    assert base == ms(100)
    low = config.delay_for_attempt_with_jitter(1, 0.0)
    high = config.delay_for_attempt_with_jitter(1, 1.0)
    assert low < base
    assert high > base
    assert low == ms(90)
    assert high == ms(110)


# --- golden JSON ----------------------------------------------------------------------------

GOLDEN_OBJECTS: list[tuple[str, RetryConfig]] = [
    ("retry_network.json", RetryConfig.network()),
    ("retry_fast.json", RetryConfig.fast()),
    ("retry_api.json", RetryConfig.api()),
    ("retry_no_retry.json", RetryConfig.no_retry()),
]


@pytest.mark.parametrize(("name", "value"), GOLDEN_OBJECTS, ids=[n for n, _ in GOLDEN_OBJECTS])
def test_golden(name: str, value: RetryConfig) -> None:
    text = (GOLDEN / name).read_text(encoding="utf-8")
    assert serde.dumps(value.to_json()) == text
    assert RetryConfig.from_json(serde.loads(text)) == value


def test_network_golden_is_exactly_the_spec_example() -> None:
    assert (GOLDEN / "retry_network.json").read_bytes() == (
        b'{"max_attempts":5,"initial_delay":{"secs":0,"nanos":100000000},'
        b'"max_delay":{"secs":10,"nanos":0},"exponential_base":2.0,"jitter_factor":0.1}'
    )


# --- presets and construction ---------------------------------------------------------------


def test_presets() -> None:
    assert RetryConfig.fast() == RetryConfig(3, ms(10), ms(100), 2.0, 0.0)
    assert RetryConfig.network() == RetryConfig(5, ms(100), timedelta(seconds=10), 2.0, 0.1)
    assert RetryConfig.api() == RetryConfig(
        3, timedelta(seconds=1), timedelta(seconds=30), 2.0, 0.2
    )
    assert RetryConfig.no_retry() == RetryConfig(0, timedelta(0), timedelta(0), 2.0, 0.0)
    assert RetryConfig.default() == RetryConfig.network()
    assert RetryConfig.new(7, ms(1), ms(2), 3.0) == RetryConfig(7, ms(1), ms(2), 3.0, 0.0)


def test_numbers_are_stored_and_written_as_floats() -> None:
    config = RetryConfig(3, ms(1), ms(2), 2, 0)
    assert isinstance(config.exponential_base, float)
    assert isinstance(config.jitter_factor, float)
    assert serde.dumps(config.to_json()).endswith('"exponential_base":2.0,"jitter_factor":0.0}')
    assert config == RetryConfig(3, ms(1), ms(2), 2.0, 0.0)


def test_non_finite_floats_are_written_as_null() -> None:
    config = RetryConfig(1, ms(1), ms(2), math.inf, math.nan)
    data = config.to_json()
    assert data["exponential_base"] is None
    assert data["jitter_factor"] is None
    with pytest.raises(SerdeError, match="exponential_base must be a number, got null"):
        RetryConfig.from_json(serde.loads(serde.dumps(data)))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((-1, ms(1), ms(1), 2.0), ValueError, "max_attempts must be between"),
        ((2**32, ms(1), ms(1), 2.0), ValueError, "max_attempts must be between"),
        ((True, ms(1), ms(1), 2.0), TypeError, "max_attempts must be an int"),
        ((1.0, ms(1), ms(1), 2.0), TypeError, "max_attempts must be an int"),
        ((1, ms(-1), ms(1), 2.0), ValueError, "initial_delay must not be negative"),
        ((1, ms(1), -ms(1), 2.0), ValueError, "max_delay must not be negative"),
        ((1, 100, ms(1), 2.0), TypeError, "initial_delay must be a timedelta"),
    ],
)
def test_construction_validates(
    args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RetryConfig(*args)


# --- delays ---------------------------------------------------------------------------------


def test_delays_lists_every_retry() -> None:
    assert [as_ms(d) for d in RetryConfig.network().delays()] == [100, 200, 400, 800, 1600]
    assert [as_ms(d) for d in RetryConfig.fast().delays()] == [10, 20, 40]
    assert [as_ms(d) for d in RetryConfig.api().delays()] == [1000, 2000, 4000]


def test_sub_millisecond_parts_are_truncated() -> None:
    config = RetryConfig.new(
        5, timedelta(microseconds=100_999), timedelta(microseconds=250_999), 2.0
    )
    assert config.delay_for_attempt(1) == ms(100)
    assert config.delay_for_attempt(2) == ms(200)
    assert config.delay_for_attempt(3) == ms(250)  # cap is whole ms too
    assert RetryConfig.new(1, timedelta(microseconds=999), ms(10), 2.0).delay_for_attempt(
        1
    ) == timedelta(0)


def test_fractional_results_truncate_to_whole_ms() -> None:
    config = RetryConfig.new(5, ms(3), ms(100), 1.5)
    assert [as_ms(config.delay_for_attempt(n)) for n in range(1, 5)] == [3, 4, 6, 10]


@pytest.mark.parametrize("attempt", [64, 1_025, 2**31, 2**32 - 1, 2**40])
def test_huge_attempts_overflow_to_the_cap(attempt: int) -> None:
    config = RetryConfig.new(5, ms(100), timedelta(seconds=10), 2.0)
    assert config.delay_for_attempt(attempt) == timedelta(seconds=10)


def test_infinite_and_nan_delays_become_the_cap() -> None:
    cap = timedelta(seconds=10)
    assert RetryConfig.new(5, ms(100), cap, 1e300).delay_for_attempt(3) == cap
    assert RetryConfig.new(5, ms(100), cap, math.inf).delay_for_attempt(2) == cap
    assert RetryConfig.new(5, ms(100), cap, math.nan).delay_for_attempt(2) == cap
    # 0 ms times an infinite power is NaN, which f64::min also replaces by the cap.
    assert RetryConfig.new(5, timedelta(0), cap, 1e300).delay_for_attempt(3) == cap
    assert RetryConfig.new(5, timedelta(0), cap, 2.0).delay_for_attempt(3) == timedelta(0)


def test_negative_results_clamp_to_zero() -> None:
    config = RetryConfig.new(5, ms(100), timedelta(seconds=10), -2.0)
    assert config.delay_for_attempt(1) == ms(100)  # (-2)^0 = 1
    assert config.delay_for_attempt(2) == timedelta(0)  # -200 ms
    assert config.delay_for_attempt(3) == ms(400)
    assert RetryConfig.new(5, ms(100), ms(300), -math.inf).delay_for_attempt(2) == timedelta(0)


def test_power_is_exact_for_small_bases() -> None:
    config = RetryConfig.new(20, ms(1024), timedelta(days=1), 1.5)
    # 1024 * 1.5^10 = 59049 exactly.
    assert config.delay_for_attempt(11) == ms(59049)
    # Base 1 never grows, base 0 gives 0 after the first retry (0^0 = 1).
    assert RetryConfig.new(3, ms(7), ms(100), 1.0).delay_for_attempt(1000) == ms(7)
    assert RetryConfig.new(3, ms(7), ms(100), 0.0).delay_for_attempt(1) == ms(7)
    assert RetryConfig.new(3, ms(7), ms(100), 0.0).delay_for_attempt(2) == timedelta(0)


def test_largest_cap_does_not_overflow_timedelta() -> None:
    config = RetryConfig.new(3, timedelta.max, timedelta.max, 2.0)
    assert config.delay_for_attempt(3) <= timedelta.max
    assert config.delay_for_attempt_with_jitter(3, 1.0) <= timedelta.max


def test_negative_attempt_is_rejected() -> None:
    with pytest.raises(ValueError, match="attempt must not be negative"):
        RetryConfig.network().delay_for_attempt(-1)


def test_jitter_clamps_the_random_value() -> None:
    config = RetryConfig.network()
    assert config.delay_for_attempt_with_jitter(1, -5.0) == ms(90)
    assert config.delay_for_attempt_with_jitter(1, 7.0) == ms(110)
    assert config.delay_for_attempt_with_jitter(1, -math.inf) == ms(90)
    assert config.delay_for_attempt_with_jitter(1, math.inf) == ms(110)
    assert config.delay_for_attempt_with_jitter(1, 0.5) == ms(100)
    # NaN survives f64::clamp and then saturates to zero.
    assert config.delay_for_attempt_with_jitter(1, math.nan) == timedelta(0)


def test_jitter_is_skipped_without_a_positive_factor() -> None:
    for jitter in (0.0, -0.5, -math.inf):
        config = RetryConfig(5, ms(100), timedelta(seconds=10), 2.0, jitter)
        assert config.delay_for_attempt_with_jitter(2, 0.0) == ms(200)
        assert config.delay_for_attempt_with_jitter(2, 1.0) == ms(200)


def test_jitter_of_first_attempt_is_zero() -> None:
    assert RetryConfig.api().delay_for_attempt_with_jitter(0, 1.0) == timedelta(0)


def test_large_jitter_clamps_at_zero() -> None:
    config = RetryConfig(5, ms(100), timedelta(seconds=10), 2.0, 3.0)
    assert config.delay_for_attempt_with_jitter(1, 0.0) == timedelta(0)  # 100 * (1 - 3)
    assert config.delay_for_attempt_with_jitter(1, 1.0) == ms(400)  # 100 * (1 - 3 + 6)


@given(
    st.integers(min_value=0, max_value=40),
    durations,
    durations,
    st.floats(min_value=1.0, allow_nan=False),
)
def test_delays_are_monotonic_and_capped(
    max_attempts: int, initial: timedelta, cap: timedelta, base: float
) -> None:
    config = RetryConfig.new(max_attempts, initial, cap, base)
    delays = list(config.delays())
    assert len(delays) == max_attempts
    assert all(a <= b for a, b in itertools.pairwise([timedelta(0), *delays]))
    assert all(as_ms(d) <= as_ms(cap) for d in delays)
    assert all(d % ms(1) == timedelta(0) for d in delays)


@given(
    st.integers(min_value=0, max_value=2**33),
    durations,
    durations,
    st.floats(),
    st.floats(),
    st.floats(),
)
def test_delays_are_always_bounded(
    attempt: int, initial: timedelta, cap: timedelta, base: float, jitter: float, r: float
) -> None:
    config = RetryConfig(5, initial, cap, base, jitter)
    delay = config.delay_for_attempt(attempt)
    assert timedelta(0) <= delay <= timedelta(milliseconds=as_ms(cap))
    jittered = config.delay_for_attempt_with_jitter(attempt, r)
    assert timedelta(0) <= jittered <= timedelta.max
    if jitter > 0 and not math.isnan(r) and math.isfinite(jitter) and jitter <= 1:
        spread = as_ms(delay) * jitter + 1
        assert abs(as_ms(jittered) - as_ms(delay)) <= spread


# --- JSON -----------------------------------------------------------------------------------


def _network_json(**changes: Any) -> dict[str, Any]:
    data = RetryConfig.network().to_json()
    for key, value in changes.items():
        if value is _MISSING:
            del data[key]
        else:
            data[key] = value
    return data


def test_missing_jitter_factor_defaults_to_zero() -> None:
    config = RetryConfig.from_json(_network_json(jitter_factor=_MISSING))
    assert config.jitter_factor == 0.0
    assert config == RetryConfig.new(5, ms(100), timedelta(seconds=10), 2.0)


def test_integer_floats_are_accepted() -> None:
    config = RetryConfig.from_json(_network_json(exponential_base=3, jitter_factor=0))
    assert config.exponential_base == 3.0
    assert isinstance(config.exponential_base, float)
    assert serde.dumps(config.to_json()).endswith('"exponential_base":3.0,"jitter_factor":0.0}')


def test_unknown_top_level_keys_are_ignored() -> None:
    assert RetryConfig.from_json(_network_json(extra=[1])) == RetryConfig.network()


def test_duration_nanos_carry_and_truncate() -> None:
    config = RetryConfig.from_json(
        _network_json(
            initial_delay={"nanos": 1_500_000_999, "secs": 0},
            max_delay={"secs": 2**32, "nanos": 0},
        )
    )
    assert config.initial_delay == timedelta(seconds=1, microseconds=500_000)
    assert config.max_delay == timedelta(seconds=2**32)
    assert config.to_json()["initial_delay"] == {"secs": 1, "nanos": 500_000_000}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_attempts": _MISSING}, r"RetryConfig: missing field `max_attempts`"),
        ({"initial_delay": _MISSING}, r"RetryConfig: missing field `initial_delay`"),
        ({"max_delay": _MISSING}, r"RetryConfig: missing field `max_delay`"),
        ({"exponential_base": _MISSING}, r"RetryConfig: missing field `exponential_base`"),
        ({"max_attempts": 1.0}, r"RetryConfig.max_attempts must be an integer, got a number"),
        ({"max_attempts": 5.5}, r"RetryConfig.max_attempts must be an integer, got a number"),
        ({"max_attempts": True}, r"RetryConfig.max_attempts must be an integer, got a boolean"),
        ({"max_attempts": "5"}, r"RetryConfig.max_attempts must be an integer, got a string"),
        ({"max_attempts": None}, r"RetryConfig.max_attempts must be an integer, got null"),
        ({"max_attempts": -1}, r"RetryConfig.max_attempts must be between 0 and 4294967295"),
        ({"max_attempts": 2**32}, r"RetryConfig.max_attempts must be between 0 and 4294967295"),
        (
            {"exponential_base": True},
            r"RetryConfig.exponential_base must be a number, got a boolean",
        ),
        (
            {"exponential_base": "2.0"},
            r"RetryConfig.exponential_base must be a number, got a string",
        ),
        ({"exponential_base": None}, r"RetryConfig.exponential_base must be a number, got null"),
        ({"exponential_base": 10**400}, r"RetryConfig.exponential_base: number out of range"),
        ({"jitter_factor": None}, r"RetryConfig.jitter_factor must be a number, got null"),
        ({"jitter_factor": False}, r"RetryConfig.jitter_factor must be a number, got a boolean"),
        ({"initial_delay": 100}, r"RetryConfig.initial_delay must be a JSON object, got a number"),
        ({"initial_delay": None}, r"RetryConfig.initial_delay must be a JSON object, got null"),
        (
            {"initial_delay": [0, 100]},
            r"RetryConfig.initial_delay must be a JSON object, got an array",
        ),
        ({"initial_delay": {"secs": 0}}, r"RetryConfig.initial_delay: missing field `nanos`"),
        ({"max_delay": {"nanos": 0}}, r"RetryConfig.max_delay: missing field `secs`"),
        (
            {"max_delay": {"secs": 10, "nanos": 0, "millis": 0}},
            r"RetryConfig.max_delay: unknown field `millis`, expected `secs` or `nanos`",
        ),
        (
            {"max_delay": {"secs": 1.0, "nanos": 0}},
            r"RetryConfig.max_delay.secs must be an integer",
        ),
        (
            {"max_delay": {"secs": True, "nanos": 0}},
            r"RetryConfig.max_delay.secs must be an integer, got a boolean",
        ),
        ({"max_delay": {"secs": -1, "nanos": 0}}, r"RetryConfig.max_delay.secs must be between"),
        ({"max_delay": {"secs": 2**64, "nanos": 0}}, r"RetryConfig.max_delay.secs must be between"),
        (
            {"max_delay": {"secs": 0, "nanos": 2**32}},
            r"RetryConfig.max_delay.nanos must be between",
        ),
        (
            {"max_delay": {"secs": 0, "nanos": None}},
            r"RetryConfig.max_delay.nanos must be an integer, got null",
        ),
        (
            {"max_delay": {"secs": 2**64 - 1, "nanos": 1_000_000_000}},
            r"RetryConfig.max_delay: overflow deserializing Duration",
        ),
        (
            {"max_delay": {"secs": 2**63, "nanos": 0}},
            r"RetryConfig.max_delay: .*too large for a timedelta",
        ),
    ],
)
def test_from_json_rejects(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SerdeError, match=f"^{message}"):
        RetryConfig.from_json(_network_json(**changes))


@pytest.mark.parametrize("value", [None, [], "network", 5])
def test_from_json_rejects_non_objects(value: Any) -> None:
    with pytest.raises(SerdeError, match=r"^RetryConfig must be a JSON object"):
        RetryConfig.from_json(value)


@given(configs)
def test_round_trips(config: RetryConfig) -> None:
    text = serde.dumps(config.to_json())
    assert RetryConfig.from_json(serde.loads(text)) == config
