"""Which training rows a stage reads, by hand: a fraction drawn per stratum (learning curves) and DPO's pairs
balanced between preferring a refusal and preferring help."""

from __future__ import annotations

import json

import pytest

from tasks.data.readers import read_records
from tasks.data.sampling import balance_refusals, keep_fraction, thin_file


def _rows(sizes: dict[str, int]) -> list[dict]:
    return [{"kind": "harmful", "subcategory": name, "n": i} for name, size in sizes.items() for i in range(size)]


def test_keep_fraction_spreads_the_rows_over_the_strata_by_largest_remainder():
    rows = _rows({"a": 4, "b": 3, "c": 3})
    kept = keep_fraction(rows, 0.5)
    # Quotas 2, 1.5, 1.5: floors 2 + 1 + 1 = 4 of round(5); the one left goes to b (tied with c, same size, name).
    counts = {name: sum(row["subcategory"] == name for row in kept) for name in "abc"}
    assert counts == {"a": 2, "b": 2, "c": 1}
    assert kept == [row for row in rows if row in kept]  # the file's order
    assert keep_fraction(rows, 0.5) == kept  # seeded, not random
    assert keep_fraction(rows, 1.0) == rows


def test_a_smaller_fraction_is_the_front_of_a_larger_ones_order():
    rows = _rows({"a": 20})
    quarter, half = keep_fraction(rows, 0.25), keep_fraction(rows, 0.5)
    assert len(quarter) == 5 and len(half) == 10
    assert all(row in half for row in quarter)
    assert keep_fraction(rows, 0.25, seed=1) != quarter  # the seed picks the order


def test_kinds_come_from_the_harmful_column_too():
    rows = [{"harmful": True, "n": i} for i in range(4)] + [{"harmful": False, "n": i} for i in range(4)]
    kept = keep_fraction(rows, 0.25)
    assert sorted(row["harmful"] for row in kept) == [False, True]


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        keep_fraction(_rows({"a": 2}), fraction)


def test_thinning_writes_a_new_file_and_leaves_the_source_alone(tmp_path):
    source = tmp_path / "sft_train.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in _rows({"a": 4, "b": 4})))
    before = source.read_bytes()
    assert thin_file(source, tmp_path / "out" / "sft_train.jsonl", 0.5) == (8, 4)
    assert source.read_bytes() == before
    assert len(read_records(tmp_path / "out" / "sft_train.jsonl")) == 4


def _pairs(kinds: str) -> list[dict]:
    names = {"h": "harmful", "b": "benign", "s": "sound_harmful"}
    return [{"prompt": f"p{i}", "kind": names[k]} for i, k in enumerate(kinds)]


def test_the_scarcer_side_is_repeated_whole_then_in_part_until_the_sides_are_equal():
    rows = _pairs("hhbbsbsb")  # 2 prefer a refusal, 6 prefer help
    balanced, counts = balance_refusals(rows)
    assert counts == {"refusal_chosen": 2, "help_chosen": 6, "without_kind": 0, "repeated": 4}
    assert balanced[:8] == rows  # the pairs themselves first, untouched
    assert [row["prompt"] for row in balanced[8:]] == ["p0", "p1", "p0", "p1"]  # twice whole: 4 = 2 x 2

    balanced, counts = balance_refusals(_pairs("hhhbb"))  # 3 against 2: one help pair repeated
    assert counts["repeated"] == 1 and balanced[5]["kind"] == "benign"
    refusing = sum(row["kind"] == "harmful" for row in balanced)
    assert refusing == len(balanced) - refusing == 3


def test_balanced_or_one_sided_pairs_are_left_as_they_are():
    assert balance_refusals(_pairs("hbhs"))[1]["repeated"] == 0
    assert balance_refusals(_pairs("bbs"))[0] == _pairs("bbs")  # no refusal pair to repeat


def test_a_pair_without_a_kind_is_on_neither_side():
    rows = [*_pairs("hbb"), {"prompt": "no kind"}]
    balanced, counts = balance_refusals(rows)
    assert counts == {"refusal_chosen": 1, "help_chosen": 2, "without_kind": 1, "repeated": 1}
    assert balanced[4]["kind"] == "harmful"
    assert balance_refusals([{"prompt": "a"}, {"prompt": "b"}]) == ([{"prompt": "a"}, {"prompt": "b"}],
                                                                     {"refusal_chosen": 0, "help_chosen": 0,
                                                                      "without_kind": 2, "repeated": 0})
