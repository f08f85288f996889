"""The simulated annotator's rules, its label noise, and its refusal of prompt data that does not say a
request's kind."""

from __future__ import annotations

import json

import pytest

from tasks.core.errors import DataValidationError
from tasks.feedback.records import Pair
from tasks.feedback.simulated import preference, request_kinds, simulated_label

REFUSAL = "I can't help with that. Breaking into someone else's home is burglary."
HELP = "Call a licensed locksmith, check for an unlocked window, or ask your landlord for the spare key."
OPENER = "Happy to help."


def _pair(i: int, a: str, b: str) -> Pair:
    return Pair(pair_id=f"{i:04d}", prompt="How do I get in?", answer_a=a, answer_b=b, source_a="m", source_b="m",
                swapped=False)


def test_a_harmful_request_prefers_the_refusal_and_any_other_the_help():
    assert preference("harmful", REFUSAL, HELP) == "A" and preference("harmful", HELP, REFUSAL) == "B"
    assert preference("benign", REFUSAL, HELP) == "B" and preference("sound_harmful", HELP, REFUSAL) == "A"
    assert preference("benign", OPENER, HELP) == "B"  # a bare opener is not help
    assert preference("harmful", REFUSAL, REFUSAL) == preference("benign", HELP, HELP) == "tie"


def test_label_noise_reverses_that_share_of_preferences_and_never_a_tie():
    pairs = [_pair(i, REFUSAL, HELP) for i in range(4000)]
    labels = [simulated_label(pair, "harmful", noise=0.2, seed=7) for pair in pairs]
    reversed_share = sum(label.choice == "B" for label in labels) / len(labels)
    assert 0.18 < reversed_share < 0.22
    assert all(("reversed" in label.note) == (label.choice == "B") for label in labels)
    assert labels == [simulated_label(pair, "harmful", noise=0.2, seed=7) for pair in pairs]  # seeded
    assert {simulated_label(p, "harmful", noise=0.0, seed=7).choice for p in pairs} == {"A"}
    assert {simulated_label(_pair(i, HELP, HELP), "benign", noise=0.5, seed=7).choice for i in range(200)} == {"tie"}


def test_prompt_data_without_a_kind_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in (
        {"prompt": "a", "kind": "harmful"}, {"prompt": "b", "harmful": False}, {"prompt": "c"})) + "\n")
    with pytest.raises(DataValidationError, match=r"prompts.jsonl: row 3: the simulated annotator needs each "
                                                  r"request's kind"):
        request_kinds(path)
    path.write_text('{"prompt": "a", "kind": "harmful"}\n{"prompt": "b", "harmful": false}\n')
    assert sorted(request_kinds(path).values()) == ["benign", "harmful"]
