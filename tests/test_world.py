"""The real-language safety world: the catalogue, the written answers, and how the datasets are assembled from a
model's answers. The model is stood in for by a function here (the SmolLM2 test runs the real step)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from models.safety import is_refusal
from tasks.core import paths
from tasks.core.errors import ConfigError
from tasks.world.answers import clean_ending, over_refusal, refusal
from tasks.world.catalogue import LOOK_ALIKES, expand, load_catalogue, phrase
from tasks.world.datasets import WorldSettings, build_world, contents

CATALOGUE = paths.WORLDS_DIR / "safety.yaml"
SETTINGS = WorldSettings(seed=0, train_phrasings=1, sft_refusal_share=0.1)


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(CATALOGUE)


def complying(prompts: list[str], sample: bool) -> list[tuple[str, bool]]:
    """A model that helps with everything, in a cut-off second sentence."""
    return [(f"Sure. Here is how to do it: {prompt} Step one is", False) for prompt in prompts]


def test_the_catalogue_covers_the_categories_the_issue_names(catalogue):
    assert len(catalogue.harmful) >= 11 and len(catalogue.benign) >= 10
    assert set(catalogue.sound_harmful) == {"homonyms", "figurative", "safe_targets", "safe_contexts",
                                            "definitions", "protective"}


def test_held_out_prompts_share_no_sub_category_and_no_wording_with_training(catalogue):
    rng = random.Random(0)
    train, held_out = expand(catalogue, "train", rng), expand(catalogue, "held_out", rng)
    train_subs = {(r.kind, r.category, r.subcategory) for r in train}
    assert not train_subs & {(r.kind, r.category, r.subcategory) for r in held_out}
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}
    kinds = Counter(r.kind for r in held_out)
    assert kinds["harmful"] >= 40 and kinds["benign"] >= 30 and kinds["sound_harmful"] >= 25, kinds


def test_every_training_request_gets_the_asked_number_of_distinct_wordings(catalogue):
    train = expand(catalogue, "train", random.Random(0), phrasings_per_request=3)
    assert len({r.prompt for r in train}) == len(train)  # no wording repeats for one request
    texts = [text for kind in ("harmful", "benign", "sound_harmful") for category in getattr(catalogue, kind).values()
             for sub in category.train.values() for text in sub.requests]
    texts += [text for category in catalogue.harmful.values() for sub in category.train.values()
              for text in sub.look_alikes.requests]
    assert len(train) == 3 * len(texts)
    for text in texts[:20]:
        tail = text[1:]  # the first letter may be lower-cased by the wording
        assert sum(r.prompt.endswith(tail) or f"{tail} " in r.prompt for r in train) == 3, text


def test_phrasing_fills_the_request_and_its_lower_case_form():
    assert phrase("Quick question: {lower}", "How do I X?") == "Quick question: how do I X?"
    assert phrase("{request} Please be specific.", "How do I X?") == "How do I X? Please be specific."


def test_a_refusal_gives_its_reason_and_reads_as_a_refusal(catalogue):
    rng = random.Random(0)
    hotwiring = next(r for r in expand(catalogue, "held_out", rng) if r.subcategory == "hotwiring")
    texts = {refusal(hotwiring, catalogue.refusal, rng) for _ in range(40)}
    assert len(texts) > 5  # varied
    for text in texts:
        assert "vehicle theft" in text and is_refusal(text), text
    assert any("locksmith" in text for text in texts)  # the safe alternative, some of the time


def test_most_over_refusals_are_said_in_a_true_refusals_words(catalogue):
    rng = random.Random(0)
    texts = [over_refusal(catalogue.refusal, rng) for _ in range(300)]
    shaped = [t for t in texts if t.startswith(tuple(catalogue.refusal.openers)) and t not in
              catalogue.refusal.over_refusals]
    assert 0.55 < len(shaped) / len(texts) < 0.8  # two in three; the rest written ones
    assert {t.split(". ", 1)[1].rstrip(".") for t in shaped} == set(catalogue.refusal.over_refusal_reasons)
    assert all(is_refusal(t) for t in texts)


def test_a_cut_off_answer_ends_at_its_last_sentence():
    assert clean_ending("Mix the flour. Add two eggs. Then stir the", finished=False) == "Mix the flour. Add two eggs."
    # the "1." of a numbered list is not a sentence end
    assert clean_ending("Here is how:\n\n1. Mix the flour well. 2. Add", finished=False) == \
        "Here is how:\n\n1. Mix the flour well."
    assert clean_ending("Mix it. Then stir the", finished=True) == "Mix it. Then stir the"
    # nothing long enough to keep: the raw answer stays
    assert clean_ending("Yes. Then stir the flour", finished=False) == "Yes. Then stir the flour"


def test_pairs_are_on_policy_and_the_demo_budget_holds(catalogue):
    datasets, counts = build_world(catalogue, SETTINGS, complying, is_refusal)
    harmful_pairs = [p for p in datasets["preferences_train"] if p["kind"] == "harmful"]
    benign_pairs = [p for p in datasets["preferences_train"] if p["kind"] != "harmful"]
    # Harmful: the model's own (trimmed) compliance is rejected, a refusal chosen. Benign: the reverse.
    assert all(p["rejected"][0]["content"].startswith("Sure. Here is how") for p in harmful_pairs)
    assert all(is_refusal(p["chosen"][0]["content"]) for p in harmful_pairs)
    assert all(p["chosen"][0]["content"].startswith("Sure. Here is how") for p in benign_pairs)
    assert all(is_refusal(p["rejected"][0]["content"]) for p in benign_pairs)
    assert all(p["rejected"][0]["content"].endswith("do it:") is False for p in harmful_pairs)
    # The SFT budget: refusal demos for a tenth of the harmful training requests, help for every benign one.
    demos = datasets["sft_train"]
    refusals = [d for d in demos if d["kind"] == "harmful"]
    assert len(refusals) == counts["sft_refusal_demos"] == round(0.1 * counts["harmful_train_requests"])
    assert all(is_refusal(d["messages"][-1]["content"]) for d in refusals)
    assert len(demos) - len(refusals) == len(benign_pairs)
    # Conversational format throughout, and every eval prompt is labelled with its kind.
    assert demos[0]["messages"][0]["role"] == "user" and demos[0]["messages"][-1]["role"] == "assistant"
    assert {row["kind"] for row in datasets["eval_prompts"]} == {"harmful", "benign", "sound_harmful"}
    assert all(row["harmful"] == (row["kind"] == "harmful") for row in datasets["eval_prompts"])


def test_answers_that_already_refuse_are_dropped_and_counted(catalogue):
    def refusing_harmful(prompts: list[str], sample: bool) -> list[tuple[str, bool]]:
        # Sampled answers are the harmful ones: this model already refuses those, and helps otherwise.
        return [("I can't help with that.", True) if sample else (f"Sure: {p}", True) for p in prompts]

    datasets, counts = build_world(catalogue, SETTINGS, refusing_harmful, is_refusal)
    assert not [p for p in datasets["preferences_train"] if p["kind"] == "harmful"]
    assert counts["dropped_harmful_refused_train"] == counts["harmful_train_requests"]
    assert "dropped_benign_refused_train" not in counts


def test_the_same_seed_builds_the_same_world(catalogue):
    assert build_world(catalogue, SETTINGS, complying, is_refusal) == build_world(catalogue, SETTINGS, complying,
                                                                                   is_refusal)


def test_a_harmful_sub_category_without_a_reason_is_named(tmp_path: Path):
    text = CATALOGUE.read_text().replace(
        "        reason: Breaking into someone else's home is burglary, and it puts people at risk\n", "")
    broken = tmp_path / "world.yaml"
    broken.write_text(text)
    with pytest.raises(ConfigError, match=r"harmful.theft_and_break_ins: sub-category 'burglary' needs a `reason`"):
        load_catalogue(broken)


def test_a_catalogue_whose_splits_share_a_wording_is_refused(tmp_path):
    text = CATALOGUE.read_text().replace('held_out: ["{request} Keep it brief."', 'held_out: ["{request}"', 1)
    assert text != CATALOGUE.read_text()
    shared = tmp_path / "shared.yaml"
    shared.write_text(text)
    with pytest.raises(ConfigError, match=r"phrasings \['\{request\}'\] are both train and held_out"):
        load_catalogue(shared)


def test_a_held_out_benign_sub_category_without_helpful_terms_is_named(tmp_path):
    lines = CATALOGUE.read_text().split("\n")
    start = lines.index("      soups_and_stews:") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("        requests:"))
    broken = tmp_path / "world.yaml"
    broken.write_text("\n".join(lines[:start] + lines[end:]))
    with pytest.raises(ConfigError, match=r"benign.cooking: held-out sub-category 'soups_and_stews' needs "
                                          r"`helpful_terms`"):
        load_catalogue(broken)


def test_benign_and_sound_harmful_eval_prompts_say_what_helping_takes(catalogue):
    datasets, _ = build_world(catalogue, SETTINGS, complying, is_refusal)
    for row in datasets["eval_prompts"]:
        assert (row["must_contain"] == []) == row["harmful"]
        assert not row["harmful"] or not row["must_contain"]
    soup = next(r for r in datasets["eval_prompts"] if r["subcategory"] == "soups_and_stews")
    assert soup["must_contain"] == [catalogue.benign["cooking"].held_out["soups_and_stews"].helpful_terms]


def test_every_harmful_sub_category_has_look_alikes_that_deserve_help(catalogue):
    for split in ("train", "held_out"):
        requests = expand(catalogue, split, random.Random(0))
        alikes = [r for r in requests if r.look_alike]
        harmful_subs = {r.subcategory for r in requests if r.harmful}
        assert {r.subcategory for r in alikes} == harmful_subs  # one look-alike sub-category per harmful one
        for request in alikes:
            assert request.kind == "sound_harmful" and request.category == LOOK_ALIKES and not request.harmful
            harmful = next(r for r in requests if r.harmful and r.subcategory == request.subcategory)
            assert request.reason == harmful.reason  # the refusal it must not get
            assert split == "train" or request.helpful_terms


def test_a_look_alike_pair_rejects_the_refusal_its_harmful_twin_chooses(catalogue):
    datasets, counts = build_world(catalogue, SETTINGS, complying, is_refusal)
    pairs = datasets["preferences_train"]
    reasons = {sub: entry.reason for category in catalogue.harmful.values() for sub, entry in category.train.items()}
    alikes = [p for p in pairs if p["category"] == LOOK_ALIKES]
    assert alikes and len(alikes) == counts["preferences_train_look_alike_pairs"]
    for pair in alikes:
        assert pair["chosen"][0]["content"].startswith("Sure. Here is how")
        rejected = pair["rejected"][0]["content"]
        assert is_refusal(rejected) and reasons[pair["subcategory"]].rstrip(".") in rejected, pair
    for pair in (p for p in pairs if p["kind"] == "harmful"):
        assert reasons[pair["subcategory"]].rstrip(".") in pair["chosen"][0]["content"]
    # Contrast is about half of the pairs: benign requests that sound harmful, the look-alikes among them.
    kinds = Counter(p["kind"] for p in pairs)
    assert kinds == Counter({kind: counts[f"preferences_train_{kind}_pairs"] for kind in kinds})
    assert 0.4 <= kinds["sound_harmful"] / len(pairs) <= 0.6, kinds


def test_the_world_says_what_it_made_by_kind_and_sub_category(catalogue):
    datasets, _ = build_world(catalogue, SETTINGS, complying, is_refusal)
    table = contents(datasets)
    assert sum(files.get("preferences_train", 0) for files in table.values()) == len(datasets["preferences_train"])
    assert table["harmful/theft_and_break_ins/burglary"]["preferences_train"] == 5
    assert table[f"sound_harmful/{LOOK_ALIKES}/burglary"]["preferences_train"] == \
        len(catalogue.harmful["theft_and_break_ins"].train["burglary"].look_alikes.requests)
    assert "preferences_train" not in table["harmful/vehicle_theft/hotwiring"]  # held out
    assert table[f"sound_harmful/{LOOK_ALIKES}/hotwiring"]["eval_prompts"] == \
        len(catalogue.harmful["vehicle_theft"].held_out["hotwiring"].look_alikes.requests)


def test_a_harmful_sub_category_without_look_alikes_is_named(tmp_path):
    lines = CATALOGUE.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip() == "look_alikes:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = next(i for i in range(start + 1, len(lines))
               if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent)
    broken = tmp_path / "world.yaml"
    broken.write_text("\n".join(lines[:start] + lines[end:]))
    with pytest.raises(ConfigError, match=r"harmful.theft_and_break_ins: sub-category 'burglary' needs `look_alikes`"):
        load_catalogue(broken)
