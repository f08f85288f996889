"""Where a stage's time goes: wall seconds summed per named phase (generating, training, loading models).

Phases nest, and each second counts once, in the innermost phase open: decoding inside a training step is
generation, not training. `taken()` hands over the totals since the last call and starts again; a stage reads
them when it ends (`tasks.run.contract.stage_run`), and what no phase claimed is the stage's fixed overhead.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps

GENERATE, TRAIN, LOAD = "generate", "train", "load"

_totals: Counter[str] = Counter()
_nested: list[float] = []  # per open phase, innermost last: the seconds its inner phases took


@contextmanager
def phase(name: str) -> Iterator[None]:
    started = time.perf_counter()
    _nested.append(0.0)
    try:
        yield
    finally:
        spent = time.perf_counter() - started
        _totals[name] += spent - _nested.pop()
        if _nested:
            _nested[-1] += spent


def timed(name: str):
    """Decorator: every call of the function is phase `name`."""
    def decorate(function):
        @wraps(function)
        def wrapper(*args, **kwargs):
            with phase(name):
                return function(*args, **kwargs)
        return wrapper
    return decorate


def taken() -> dict[str, float]:
    """Seconds per phase since the last call (phases still open are not counted yet), then zero again."""
    totals = dict(_totals)
    _totals.clear()
    return totals
