"""Predicates on the values of settings, manifest entries and checkpoint records: a number, a finite number, a whole
number above 0, a list of numbers, one of some names. Standard library only."""
from __future__ import annotations

import math
from typing import Any, Collection


def is_real(value: Any) -> bool:
    """An int or float, not a bool (NaN and inf included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return is_real(value) and math.isfinite(value)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_numbers(value: Any, count: int) -> bool:
    """A list of `count` finite numbers."""
    return isinstance(value, (list, tuple)) and len(value) == count and all(is_number(v) for v in value)


def is_one_of(value: Any, choices: Collection[str]) -> bool:
    """A string among `choices` (a list or a dict given as `value` is no error, just not one of them)."""
    return isinstance(value, str) and value in choices
