"""Exponential-backoff retry policy (spec/core.md §10).

Durations are :class:`~datetime.timedelta` values, written on the wire as serde's
``{"secs": <u64>, "nanos": <u32>}``. Delays are computed in whole milliseconds with ``f64``
arithmetic exactly as the reference does, including its overflow and NaN behaviour: a delay that
overflows to infinity or becomes NaN is replaced by ``max_delay``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Self

from astrid_core.serde import (
    U32_MAX,
    U64_MAX,
    Fields,
    duration_from_json,
    duration_to_json,
    float_to_json,
    to_float,
)

__all__ = ["RetryConfig"]

_I32_MAX = 2**31 - 1
_ONE_MS = timedelta(milliseconds=1)
_MAX_WHOLE_MS = timedelta.max // _ONE_MS


def _whole_millis(value: timedelta) -> int:
    """``Duration::as_millis``: whole milliseconds, sub-millisecond part truncated."""
    return value // _ONE_MS


def _powi(base: float, exponent: int) -> float:
    """``f64::powi`` for a non-negative exponent: binary exponentiation in ``f64``.

    Rust lowers ``powi`` to compiler-rt's ``__powidf2`` (square-and-multiply), whose rounding can
    differ from :func:`math.pow` in the last bit; this follows the same multiplication order.
    Float multiplication overflows to ``inf`` instead of raising, as in Rust.
    """
    result = 1.0
    while True:
        if exponent & 1:
            result *= base
        exponent >>= 1
        if exponent == 0:
            return result
        base *= base


def _saturating_millis(ms: float) -> timedelta:
    """``Duration::from_millis(ms as u64)``: NaN and negatives give 0, large values saturate.

    Beyond Rust's ``u64`` saturation, the result is also capped at :attr:`timedelta.max`,
    the largest duration Python can hold.
    """
    if math.isnan(ms) or ms <= 0.0:
        return timedelta(0)
    whole = U64_MAX if ms >= float(U64_MAX) else int(ms)
    return _ONE_MS * min(whole, _MAX_WHOLE_MS)


def _check_duration(value: timedelta, what: str) -> None:
    if not isinstance(value, timedelta):
        raise TypeError(f"RetryConfig.{what} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError(f"RetryConfig.{what} must not be negative")


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How many times to retry and how long to wait between attempts.

    ``max_attempts`` counts retries after the first attempt (0 = never retry) and fits a u32.
    Attempt numbers passed to the methods are 0-indexed: attempt 0 is the first try.
    ``exponential_base`` and ``jitter_factor`` are stored as floats (ints are converted) so that
    JSON always carries them as ``f64`` (``2.0``, not ``2``).
    """

    max_attempts: int
    initial_delay: timedelta
    max_delay: timedelta
    exponential_base: float
    jitter_factor: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError("RetryConfig.max_attempts must be an int")
        if not 0 <= self.max_attempts <= U32_MAX:
            raise ValueError(f"RetryConfig.max_attempts must be between 0 and {U32_MAX}")
        _check_duration(self.initial_delay, "initial_delay")
        _check_duration(self.max_delay, "max_delay")
        object.__setattr__(self, "exponential_base", float(self.exponential_base))
        object.__setattr__(self, "jitter_factor", float(self.jitter_factor))

    # -- constructors and presets -------------------------------------------------------------

    @classmethod
    def new(
        cls,
        max_attempts: int,
        initial_delay: timedelta,
        max_delay: timedelta,
        exponential_base: float,
    ) -> Self:
        """A configuration without jitter."""
        return cls(max_attempts, initial_delay, max_delay, exponential_base, 0.0)

    @classmethod
    def fast(cls) -> Self:
        """3 retries, 10 ms doubling up to 100 ms, no jitter."""
        return cls(3, timedelta(milliseconds=10), timedelta(milliseconds=100), 2.0, 0.0)

    @classmethod
    def network(cls) -> Self:
        """5 retries, 100 ms doubling up to 10 s, 10 % jitter (also :meth:`default`)."""
        return cls(5, timedelta(milliseconds=100), timedelta(seconds=10), 2.0, 0.1)

    @classmethod
    def default(cls) -> Self:
        """Same as :meth:`network`."""
        return cls.network()

    @classmethod
    def api(cls) -> Self:
        """3 retries, 1 s doubling up to 30 s, 20 % jitter."""
        return cls(3, timedelta(seconds=1), timedelta(seconds=30), 2.0, 0.2)

    @classmethod
    def no_retry(cls) -> Self:
        """Never retry (crate-private in the reference, used by its tests)."""
        return cls(0, timedelta(0), timedelta(0), 2.0, 0.0)

    # -- policy -------------------------------------------------------------------------------

    def delay_for_attempt(self, attempt: int) -> timedelta:
        """The wait before 0-indexed ``attempt``: zero for the first try, then
        ``initial_delay * exponential_base ** (attempt - 1)`` capped at ``max_delay``, computed
        in whole milliseconds (sub-millisecond parts are truncated).
        """
        if attempt < 0:
            raise ValueError(f"attempt must not be negative, got {attempt}")
        if attempt == 0:
            return timedelta(0)
        exponent = min(attempt - 1, _I32_MAX)  # Rust saturates the exponent at i32::MAX
        delay_ms = float(_whole_millis(self.initial_delay)) * _powi(self.exponential_base, exponent)
        cap_ms = float(_whole_millis(self.max_delay))
        # f64::min returns the non-NaN operand: an infinite or NaN delay becomes the cap.
        if math.isnan(delay_ms) or delay_ms > cap_ms:
            delay_ms = cap_ms
        return _saturating_millis(delay_ms)

    def delay_for_attempt_with_jitter(self, attempt: int, random_value: float) -> timedelta:
        """:meth:`delay_for_attempt` spread by ``jitter_factor``.

        ``random_value`` is clamped to [0, 1]; 0 gives ``delay * (1 - jitter)`` and 1 gives
        ``delay * (1 + jitter)``, in whole milliseconds. Without jitter (``jitter_factor <= 0``)
        the plain delay is returned. The caller supplies the randomness.
        """
        delay = self.delay_for_attempt(attempt)
        jitter = self.jitter_factor
        if jitter <= 0.0:
            return delay
        # f64::clamp keeps NaN; the final saturating conversion then turns it into zero.
        r = random_value if math.isnan(random_value) else min(max(random_value, 0.0), 1.0)
        base_ms = float(_whole_millis(delay))
        return _saturating_millis(base_ms * (1.0 - jitter + 2.0 * jitter * r))

    def should_retry(self, attempt: int) -> bool:
        """True while ``attempt`` (the number of retries made so far) is below the limit."""
        return attempt < self.max_attempts

    def delays(self) -> Iterator[timedelta]:
        """The delays before each retry: attempts ``1`` to ``max_attempts``."""
        return (self.delay_for_attempt(attempt) for attempt in range(1, self.max_attempts + 1))

    # -- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial_delay": duration_to_json(self.initial_delay),
            "max_delay": duration_to_json(self.max_delay),
            "exponential_base": float_to_json(self.exponential_base),
            "jitter_factor": float_to_json(self.jitter_factor),
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "RetryConfig") -> Self:
        fields = Fields(value, what)
        return cls(
            max_attempts=fields.uint("max_attempts", U32_MAX),
            initial_delay=fields.get("initial_delay", duration_from_json),
            max_delay=fields.get("max_delay", duration_from_json),
            exponential_base=fields.number("exponential_base"),
            # ``#[serde(default)]``: a missing key is 0.0, but ``null`` is still an error.
            jitter_factor=fields.get("jitter_factor", to_float)
            if fields.has("jitter_factor")
            else 0.0,
        )
