"""Which training rows a stage reads: a fraction of them, for learning curves, or the pairs balanced between what
they want done, for DPO.

**A fraction** (`data.train_fraction`): the same method trained on 25 / 50 / 100% of its rows, judged on the same
whole held-out eval, shows whether more data would reach a target. It is drawn per stratum (request kind, category
and sub-category, where the rows say them), so a quarter of the world is a quarter of each kind and sub-category,
not a quarter that happens to miss one. Which rows are kept is a seeded order over each stratum, read from the
front: a smaller fraction takes the front of the order a larger one extends, so the rows of 25% are among those of
50% except where rounding moves one row.

**A balance** (`dpo.balance_refusals`): a preference pair either prefers a refusal (a harmful request) or prefers
help over a refusal (a benign or sound-harmful one). The refusals are often the same words on both sides, so
whichever side has more pairs pulls those words up or down on every request, and the model learns less about
which requests call for them. Repeating the scarcer side's pairs until the sides are equal leaves only the
request to tell them apart.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tasks.core.request_kinds import kind_of
from tasks.data.readers import read_records
from tasks.data.writers import write_jsonl

TRAIN_FILES = ("sft_train", "preferences_train")  # what a fraction thins; the held-out files stay whole


def stratum(row: dict) -> tuple[str, str, str]:
    """Kind (or `unknown`), category and sub-category ('' where the row has none)."""
    return (kind_of(row) or "unknown", str(row.get("category", "")), str(row.get("subcategory", "")))


def keep_fraction(rows: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """round(fraction × len(rows)) of `rows`, in their order, spread over the strata by largest remainder.

    Each stratum gets floor(fraction × its size) rows; the rows left to reach the total go to the strata with the
    largest fractional parts (ties: the larger stratum, then the stratum's name). Within a stratum the rows kept
    are the first of a seeded order (sha256 of seed and row position), so the choice does not depend on Python's
    hash seed.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    by_stratum: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for position, row in enumerate(rows):
        by_stratum[stratum(row)].append(position)
    quotas = {name: fraction * len(positions) for name, positions in by_stratum.items()}
    counts = {name: math.floor(quota) for name, quota in quotas.items()}
    left = round(fraction * len(rows)) - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda name: (-(quotas[name] - counts[name]), -len(by_stratum[name]), name))
    for name in by_remainder[:left]:
        counts[name] += 1
    kept = {position for name, positions in by_stratum.items()
            for position in sorted(positions, key=lambda p: _rank(seed, p))[:counts[name]]}
    return [row for position, row in enumerate(rows) if position in kept]


def _rank(seed: int, position: int) -> bytes:
    return hashlib.sha256(f"{seed}:{position}".encode()).digest()


def thin_file(source: Path, target: Path, fraction: float) -> tuple[int, int]:
    """Write `keep_fraction` of the JSONL file `source`'s rows to `target` (atomically; `source` is left as it
    is: it may be the user's own file). Returns the rows before and after."""
    rows = _records(source)
    kept = keep_fraction(rows, fraction)
    write_jsonl(kept, target)
    return len(rows), len(kept)


def balance_refusals(rows: Sequence[dict], seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """`rows` (preference pairs), then repeats of the scarcer side's, so that as many pairs prefer a refusal
    (harmful requests) as prefer help (the other kinds). The scarcer side is repeated whole as often as it fits,
    then the first pairs of a seeded order make up the rest. A pair whose row says no kind (AI-labelled or
    imported pairs may not) is on neither side and never repeated; a side with no pairs cannot be. Returns the
    rows and the counts: `refusal_chosen`, `help_chosen` and `without_kind` before, and the pairs `repeated`."""
    kinds = [kind_of(row) for row in rows]
    refusal = [row for row, kind in zip(rows, kinds, strict=True) if kind == "harmful"]
    helping = [row for row, kind in zip(rows, kinds, strict=True) if kind not in (None, "harmful")]
    scarce = min(refusal, helping, key=len)
    repeats: list[dict] = []
    if scarce:
        whole, part = divmod(abs(len(refusal) - len(helping)), len(scarce))
        first = sorted(sorted(range(len(scarce)), key=lambda p: _rank(seed, p))[:part])
        repeats = scarce * whole + [scarce[p] for p in first]
    counts = {"refusal_chosen": len(refusal), "help_chosen": len(helping), "without_kind": kinds.count(None),
              "repeated": len(repeats)}
    return [*rows, *repeats], counts


def balanced_file(source: Path, target: Path) -> dict[str, int]:
    """Write `source`'s pairs balanced by `balance_refusals` to `target` (atomically); returns its counts."""
    rows, counts = balance_refusals(_records(source))
    write_jsonl(rows, target)
    return counts


def _records(path: Path) -> list[dict]:
    return [record for _, record in read_records(path)]
