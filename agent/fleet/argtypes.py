"""Argument types for edge-fleet's parsers: each value checked at the edge, with a one-line reason (argparse makes it
a usage error, exit 2)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type[int] | type[float], what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}")
    return value


def seconds(text: str) -> float:
    """A duration: more than 0 seconds."""
    value = _number(text, float, "a number of seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def count(text: str) -> int:
    """A whole number of at least 1 (a count, a version, a threshold)."""
    value = int(_number(text, int, "a whole number"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def window(text: str) -> int:
    """A window of messages: 1 to 65535 (MQTT's Receive Maximum)."""
    value = int(_number(text, int, "a whole number"))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535: {text!r}")
    return value


def rate(text: str) -> float | None:
    """A rate per second: 0 means no limit (None)."""
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more: {text!r}")
    return value or None


__all__ = ["count", "rate", "seconds", "window"]
