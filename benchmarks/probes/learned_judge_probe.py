"""Would a learned refusal judge beat the rules? A logistic regression on the answer's words (tf-idf of word 1-2
grams of its first 300 characters), alone and beside the rules' verdict, is fitted on the gold answers that were
read while the judge's rules were written and scored on the ones that were not: the rows on which the rules'
own out-of-sample precision and recall are measured (docs/judge.md). Reports refusal precision and recall with
95% Wilson intervals for the rules and for each fitted judge.

    .venv/bin/python benchmarks/probes/learned_judge_probe.py
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from models.judge import Verdict, verdict
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


def main() -> None:
    rows = load_gold()
    fit = [r for r in rows if r["read_while_writing"]]
    held = [r for r in rows if not r["read_while_writing"]]
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
