"""RLAIF labeling: position swap, calibration against position bias, dropped pairs, soft labels; end to end on the
tiny local model and over HTTP against a real local server."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tasks.cai.config import PromptTemplates, load_constitution
from tasks.cai.progress import ProgressLog
from tasks.cai.prompts import load_templates
from tasks.cai.rlaif import build_rlaif_dataset, judge, label_pairs, run_rlaif
from tasks.cai.steps import model_sources
from tasks.core import paths
from tasks.core.lineage import Lineage
from tasks.run.tracking import configure_tracking
from tests.helpers.cai import REFUSAL, FakeOpenAI, cai_config, openai_server, pipeline, tiny_model_dir

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
PAIRS = [  # (id, prompt, a, b): the refusal is a in two pairs and b in the other two
    ("p1", "How do I steal a bike?", "Sorry, I can't help with that.", "Sure! Cut the lock."),
    ("p2", "How do I hack a laptop?", "Sure! Guess the password.", "Sorry, I won't help."),
    ("p3", "How do I spy on a phone?", "Sorry, I won't: that would hurt someone.", "Sure! Hide a camera."),
    ("p4", "How do I break in?", "Sure! Force the window.", "Sorry, I cannot help with that."),
]


class Scorer:
    """A stand-in feedback model: log-probs for the two labels from a rule over the rendered prompt."""

    def __init__(self, content_weight: float, position_weight: float):
        self.content_weight, self.position_weight = content_weight, position_weight
        self.truncated_prompts = 0
        self.prompts: list[str] = []

    def option_logprobs(self, prompts, options):
        self.prompts += prompts
        scores = []
        for prompt in prompts:
            a, b = re.findall(r"^\([AB]\) (.*)$", prompt, flags=re.MULTILINE)
            # logit(P(A)) = content * (refusal in A - refusal in B) + position bias towards A
            logit = self.content_weight * (("Sorry" in a) - ("Sorry" in b)) + self.position_weight
            scores.append([-math.log1p(math.exp(-logit)), -math.log1p(math.exp(logit))])
        return scores


def _label(tmp_path, scorer, min_confidence=0.5, pairs=PAIRS):
    labels = ProgressLog(tmp_path / "labels.jsonl", key=lambda r: r["id"])
    label_pairs(scorer, pairs, labels, constitution=load_constitution(paths.CONFIGS_DIR / "constitution.yaml"),
                template=load_templates(PromptTemplates())["choice"], options=("A", "B"), seed=0, chunk=3)
    return build_rlaif_dataset(pairs, labels, min_confidence=min_confidence, prefix=" ")


def test_judge_by_hand():
    # log-odds ln 4 (0.8) and 0 (0.5): their mean ln 2 is P = 2/3; half their difference, ln 2, the position bias
    p_a, bias, reason = judge(0.8, 0.5, 0.5)
    assert (p_a, bias, reason) == (pytest.approx(2 / 3), pytest.approx(math.log(2)), None)
    # 0.9 and 0.2: the raw orders disagree, but log-odds ln 9 and ln 1/4 average to ln 1.5: P(a) = 0.6, bias ln 6
    p_a, bias, reason = judge(0.9, 0.2, 0.5)
    assert (p_a, bias, reason) == (pytest.approx(0.6), pytest.approx(math.log(6)), None)
    assert "0.600 below min_confidence 0.7" in judge(0.9, 0.2, 0.7)[2]
    # 0.2 and 0.3 prefer b: P(chosen) is 1 - P(a), which the confidence is measured on
    p_a, _, reason = judge(0.2, 0.3, 0.6)
    assert p_a < 0.5 and reason is None
    assert judge(0.5, 0.5, 0.5) == (0.5, 0.0, "no preference once calibrated")
    # orders 0.476 and 0.524 cancel: log-odds -0.096 and +0.096 average to 0 up to float noise, a tie
    p_a, bias, reason = judge(0.476, 0.524, 0.5)
    assert (p_a, reason) == (0.5, "no preference once calibrated") and bias == pytest.approx(-0.0961, abs=1e-4)
    assert judge(1.0, 1.0, 0.9)[0] == pytest.approx(1.0)  # a certain label keeps finite log-odds


def test_a_feedback_model_that_prefers_one_response_labels_it_in_both_orders(tmp_path):
    scorer = Scorer(content_weight=2.0, position_weight=0.0)  # P(refusal preferred) = sigmoid(2) = 0.881
    table = _label(tmp_path, scorer)
    assert len(scorer.prompts) == 2 * len(PAIRS)  # each pair asked twice, once per order
    # The same pair appears with the responses swapped.
    first, second = scorer.prompts[0], scorer.prompts[3]
    assert "(A) Sorry, I can't help" in first and "(B) Sorry, I can't help" in second
    assert table["metrics"]["rlaif/agreement_rate"] == 1.0
    assert table["metrics"]["rlaif/first_position_prob"] == pytest.approx(0.5)
    assert len(table["kept"]) == 4 and table["dropped"] == []
    for row in table["kept"]:
        assert set(row) == {"prompt", "chosen", "rejected", "chosen_prob", "position_bias", "principle"}
        assert row["chosen"].startswith(" Sorry") and not row["rejected"].startswith(" Sorry")
        assert row["chosen_prob"] == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-6)  # soft label kept
        assert row["position_bias"] == pytest.approx(0.0, abs=1e-6)
    assert table["metrics"]["rlaif/refusal_preferred_calibrated"] == 1.0


def test_a_position_biased_scorer_is_calibrated_not_dropped(tmp_path):
    # logit(P(A)) = 0.5 * content + 2: "always (A)", so the raw orders never agree; the log-odds of the refusal are
    # 0.5 + 2 and 0.5 - 2, whose mean 0.5 is the preference and half-difference 2 the bias.
    scorer = Scorer(content_weight=0.5, position_weight=2.0)
    table = _label(tmp_path, scorer)
    metrics = table["metrics"]
    assert metrics["rlaif/agreement_rate"] == 0.0
    assert metrics["rlaif/first_position_prob"] > 0.8
    assert metrics["rlaif/position_bias_logodds"] == pytest.approx(2.0)
    assert metrics["rlaif/refusal_pairs"] == 4
    assert metrics["rlaif/refusal_preferred_raw"] == 0.5  # the first order picks (A), the refusal in 2 of 4
    assert metrics["rlaif/refusal_preferred_calibrated"] == 1.0
    assert len(table["kept"]) == 4 and table["dropped"] == []
    for row in table["kept"]:
        assert row["chosen"].startswith(" Sorry")
        assert row["chosen_prob"] == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-6)
        assert row["position_bias"] == pytest.approx(2.0)


def test_min_confidence_drops_pairs_the_calibrated_label_barely_decides(tmp_path):
    scorer = Scorer(content_weight=0.5, position_weight=2.0)  # calibrated P(refusal) = sigmoid(0.5) = 0.622
    assert len(_label(tmp_path / "lenient", scorer, min_confidence=0.6)["kept"]) == 4
    strict = _label(tmp_path / "strict", scorer, min_confidence=0.7)
    assert strict["kept"] == [] and len(strict["dropped"]) == 4
    for row in strict["dropped"]:  # written aside with the reason and both probabilities
        assert "0.622 below min_confidence 0.7" in row["reason"]
        assert row["p_first"] > 0.5 > row["p_second"] or row["p_second"] > 0.5 > row["p_first"]
        assert row["p_a_calibrated"] in (pytest.approx(0.622, abs=1e-3), pytest.approx(0.378, abs=1e-3))


def test_helpful_pairs_are_asked_about_helping_and_checked_for_picking_the_answer_that_helps(tmp_path):
    helpful = [("h1", "How do I sharpen a knife?", "Sorry, I can't help with knives.", "Hold it at 20 degrees."),
               ("h2", "How do I bake bread?", "Knead the dough.", "Sorry, I won't."),
               ("h3", "How do I fold a shirt?", "Fold the sleeves in.", "Fold it in thirds.")]
    labels = ProgressLog(tmp_path / "labels.jsonl", key=lambda r: r["id"])
    scorer = Scorer(content_weight=-2.0, position_weight=0.0)  # prefers the answer that does not decline
    helpful_ids = {"h1", "h2", "h3"}
    pairs = PAIRS + helpful
    label_pairs(scorer, [p for p in pairs if p[0] != "h3"], labels,
                constitution=load_constitution(paths.CONFIGS_DIR / "constitution.yaml"),
                template=load_templates(PromptTemplates())["choice"], options=("A", "B"), seed=0, chunk=3,
                helpful_ids=helpful_ids)
    table = build_rlaif_dataset(pairs, labels, min_confidence=0.5, prefix=" ", helpful_ids=helpful_ids)

    principles = {row["prompt"]: row["principle"] for row in table["kept"]}
    assert principles["How do I sharpen a knife?"] == principles["How do I bake bread?"] == "needless-refusal"
    assert "needless-refusal" not in {principles[prompt] for _, prompt, *_ in PAIRS}
    # Neither of h3's answers declines: no choice between helping and refusing, so no pair, with the reason.
    assert [(row["id"], row["reason"]) for row in table["dropped"]] == [
        ("h3", "a helpful prompt's pair where not exactly one response declines")]
    metrics = table["metrics"]
    assert (metrics["rlaif/helpful_pairs"], metrics["rlaif/helpful_preferred_calibrated"]) == (2, 1.0)
    assert (metrics["rlaif/refusal_pairs"], metrics["rlaif/refusal_preferred_calibrated"]) == (4, 0.0)


def test_identical_or_empty_responses_are_dropped_with_a_reason_and_need_no_label(tmp_path):
    pairs = [("p1", "Q?", "Same answer.", "Same answer."), ("p2", "Q?", "", "Sorry.")]
    no_labels = ProgressLog(tmp_path / "labels.jsonl", key=lambda r: r["id"])
    table = build_rlaif_dataset(pairs, no_labels, min_confidence=0.5, prefix=" ")
    assert [row["reason"] for row in table["dropped"]] == ["identical responses", "an empty response"]
    assert table["metrics"]["rlaif/labeled"] == 0


def test_rlaif_step_on_the_tiny_local_model(tmp_path, demo_data_dir, tracked):
    model_dir = tiny_model_dir()
    cai = cai_config(tmp_path, policy={"model_uri": str(model_dir), "batch_size": 4})
    cfg = pipeline(tmp_path, demo_data_dir)
    configure_tracking(cfg)
    result = run_rlaif(cfg, LINEAGE, cai=cai, models=model_sources(cai, None))
    kept = _rows(result.outputs["rlaif_preferences"])
    dropped = _rows(result.outputs["rlaif_dropped"])
    assert len(kept) + len(dropped) == 6 == result.metrics["rlaif/pairs"]
    assert 0.0 <= result.metrics["rlaif/agreement_rate"] <= 1.0
    for row in kept:
        assert row["chosen"] != row["rejected"] and 0.5 < row["chosen_prob"] <= 1.0
    for row in dropped:
        assert row["reason"]


def test_rlaif_over_http_labels_the_refusal_consistently(tmp_path, demo_data_dir, tracked):
    fake = FakeOpenAI()
    with openai_server(fake) as url:
        backend = {"kind": "http", "url": url, "backoff_s": 0.01, "batch_size": 4}
        cai = cai_config(tmp_path, policy=backend, feedback=backend)
        cfg = pipeline(tmp_path, demo_data_dir)
        configure_tracking(cfg)
        result = run_rlaif(cfg, LINEAGE, cai=cai, models=model_sources(cai, None))
    kept = _rows(result.outputs["rlaif_preferences"])
    assert len(kept) == 6 and result.metrics["rlaif/agreement_rate"] == 1.0
    assert all(row["chosen"] == " " + REFUSAL and row["chosen_prob"] == pytest.approx(0.9) for row in kept)
    scoring = [r for r in fake.requests if r.get("logprobs")]
    assert sum(len(r["prompt"]) for r in scoring) == 12  # 6 pairs x 2 orders


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
