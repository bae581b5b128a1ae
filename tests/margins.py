"""How a learning test states its result: the margin over its baseline in standard errors.

Every test that asserts something learns passes only with a margin of at least
:data:`MIN_SE` standard errors, and prints the margin it measured (``pytest -rP`` shows it), so
that a run on another CPU, whose floats round differently and whose training therefore takes
another path, tells how close it came.
"""

from __future__ import annotations

import math

import numpy as np

MIN_SE = 5.0


def accuracy_se(p: float, n: int) -> float:
    """One standard error of an accuracy near ``p`` measured on ``n`` independent samples."""
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def paired_se(diff: np.ndarray) -> float:
    """One standard error of the mean of paired differences."""
    return float(np.std(diff, ddof=1) / math.sqrt(len(diff)))


def assert_margin(what: str, value: float, baseline: float, se: float) -> float:
    """Assert ``value`` beats ``baseline`` by :data:`MIN_SE` standard errors ``se``; print and
    return the margin in standard errors."""
    margin = (value - baseline) / se
    print(f"{what}: {value:.4f} against {baseline:.4f}, s.e. {se:.4f}: margin {margin:.1f} s.e.")
    assert margin >= MIN_SE, (
        f"{what}: {value:.4f} vs {baseline:.4f} is {margin:.1f} s.e. < {MIN_SE}"
    )
    return margin
