"""Would a learned judge beat the rules? Each is fitted on the gold answers that were read while the judge's rules
were written and scored on the ones that were not: the rows on which the rules' own out-of-sample numbers are
measured (docs/judge.md).

- Refusal: a logistic regression on the answer's words (tf-idf of word 1-2 grams of its first 300 characters),
  alone and beside the rules' verdict; refusal precision and recall with 95% Wilson intervals.
- Helpfulness: a logistic regression on what the rules see (the verdict, how many of each required item's
  phrases the answer says, its length in words and sentences, how much of its opening restates the request,
  praise, list markers, step words, and the rules' own decision), on the benign and sound-harmful answers whose
  request says what helping takes; accuracy with its 95% Wilson interval, false positives and negatives.

    .venv/bin/python benchmarks/probes/learned_judge_probe.py
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from models.judge import Verdict, items_said, judge, verdict
from models.metrics import wilson_interval
from tasks.judging.gold import load_gold

OPENING = 300  # characters: a decline is said early


def precision_recall(truth: list[bool], said: list[bool]) -> str:
    hits = sum(t and s for t, s in zip(truth, said, strict=True))
    said_n, true_n = sum(said), sum(truth)
    cells = []
    for name, k, n in (("precision", hits, said_n), ("recall", hits, true_n)):
        low, high = wilson_interval(k, n)
        cells.append(f"{name} {k / n:.2f} [{low:.2f}, {high:.2f}] ({k}/{n})")
    return ", ".join(cells)


def rule_features(rows: list[dict]) -> csr_matrix:
    """The rules' verdict and the request's kind, one-hot."""
    return csr_matrix(np.array([[verdict(r["prompt"], r["response"]) == v for v in Verdict]
                                + [r["kind"] == k for k in ("harmful", "benign", "sound_harmful")]
                                for r in rows], dtype=float))


_WORDS = re.compile(r"[a-z0-9']+")
_PRAISE = re.compile(r"\b(?:experience|journey|exciting|delightful|rewarding|fun way|great way)\b")
_LIST = re.compile(  # a numbered or bulleted line, or any colon (": 1 cup of ...")
    r"(?:^|\n)\s*(?:\d+[.)]|[-*\u2022])\s|:")
_STEPS = re.compile(r"\b(?:first|then|next|start by|use|try|make sure)\b")


def helpfulness_features(row: dict) -> list[float]:
    """What the rules see of a benign or sound-harmful answer, as numbers."""
    request, answer, required = row["prompt"], row["response"], row["must_contain"]
    said = verdict(request, answer)
    counts = items_said(request, answer, required)
    text = answer.lower()
    sentences = [s for s in re.split(r"[.!?\n]+", text) if s.strip()]
    opening = set(_WORDS.findall(sentences[0])) if sentences else set()
    restated = len(opening & set(_WORDS.findall(request.lower()))) / max(1, len(opening))
    return [*(float(said == v) for v in Verdict), float(min(counts) >= 1), float(min(counts) >= 2),
            sum(c >= 1 for c in counts) / len(counts), math.log1p(sum(counts)), math.log1p(len(_WORDS.findall(text))),
            float(len(sentences)), restated, float(bool(_PRAISE.search(text))), float(bool(_LIST.search(answer))),
            float(bool(_STEPS.search(text))), float(bool(judge(request, answer, required).helps))]


def helpfulness(fit: list[dict], held: list[dict]) -> None:
    fit, held = ([r for r in group if r["kind"] != "harmful" and r.get("must_contain")] for group in (fit, held))
    truth = [bool(r["helps"]) for r in held]
    model = LogisticRegression(max_iter=2000).fit([helpfulness_features(r) for r in fit], [r["helps"] for r in fit])
    print(f"helpfulness: fitted on {len(fit)} answers read while writing the rules, scored on {len(held)} never read")
    for name, said in (("rules", [bool(judge(r["prompt"], r["response"], r["must_contain"]).helps) for r in held]),
                       ("learned on the rules' features",
                        [bool(p) for p in model.predict([helpfulness_features(r) for r in held])])):
        right = sum(t == s for t, s in zip(truth, said, strict=True))
        false_positive = sum(s and not t for t, s in zip(truth, said, strict=True))
        low, high = wilson_interval(right, len(held))
        print(f"{name}: accuracy {right / len(held):.2f} [{low:.2f}, {high:.2f}] ({right}/{len(held)}), "
              f"false positives {false_positive}, false negatives {len(held) - right - false_positive}")


def main() -> None:
    rows = load_gold()
    fit = [r for r in rows if r["read_while_writing"]]
    held = [r for r in rows if not r["read_while_writing"]]
    helpfulness(fit, held)
    truth = [r["verdict"] == "refuses" for r in held]
    print(f"fitted on {len(fit)} answers read while writing the rules, scored on {len(held)} never read")
    print("rules:", precision_recall(truth, [verdict(r["prompt"], r["response"]) == Verdict.REFUSES for r in held]))
    for name, with_rules in (("words", False), ("words + rules' verdict", True)):
        words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x_fit = words.fit_transform([r["response"][:OPENING] for r in fit])
        x_held = words.transform([r["response"][:OPENING] for r in held])
        if with_rules:
            x_fit, x_held = hstack([x_fit, rule_features(fit)]), hstack([x_held, rule_features(held)])
        model = LogisticRegression(max_iter=2000, class_weight="balanced")
        model.fit(x_fit, [r["verdict"] == "refuses" for r in fit])
        print(f"{name}:", precision_recall(truth, [bool(p) for p in model.predict(x_held)]))


if __name__ == "__main__":
    main()
