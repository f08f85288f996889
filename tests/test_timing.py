"""Phase timing: each second counts once, in the innermost phase open."""

from __future__ import annotations

import time

from models.timing import phase, taken, timed


def test_nested_phases_count_each_second_once():
    taken()

    @timed("generate")
    def decode():
        time.sleep(0.1)

    with phase("train"):
        time.sleep(0.05)
        decode()
        decode()
    totals = taken()
    assert set(totals) == {"train", "generate"}
    assert totals["generate"] >= 0.2 and totals["train"] >= 0.05
    assert totals["train"] < totals["generate"]  # its own sleep only: with the decoding inside it, 0.25 s
    assert taken() == {}


def test_a_phase_that_raises_still_counts():
    taken()
    try:
        with phase("load"):
            time.sleep(0.02)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert taken()["load"] >= 0.02
