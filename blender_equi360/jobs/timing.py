"""Frame counts and rates: the lengths the model takes, and rates as the exact fractions videos carry."""

from __future__ import annotations

from fractions import Fraction


def valid_frame_count(n: int) -> bool:
    """LTX-2 video latents hold 1 + 8k frames."""
    return n >= 1 and (n - 1) % 8 == 0


def round_up_frame_count(n: int) -> int:
    return 1 + 8 * -(-(max(n, 1) - 1) // 8)


def frame_rate(fps: float) -> Fraction:
    """A frame rate in frames per second as the exact fraction the videos carry (23.976 → 24000/1001)."""
    return Fraction(fps).limit_denominator(1001)
