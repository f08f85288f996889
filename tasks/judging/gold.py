"""The evaluation judge's gold set: real answers collected from evaluation runs, labelled by reading them
(models/judge_gold/GUIDE.md), and the judge measured against those labels.

`collect` draws answers from the `evaluate-<method>` runs under a comparison's parent run, stratified by
method and kind of request. `measure` scores the judge on the labelled rows, overall and on each group of
methods, so the judge can be shown on methods its rules were not written from: refusal precision and recall
(refuses against every other verdict), accuracy of the four-way verdict, and helpfulness accuracy, each with a
95% Wilson interval.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

import mlflow
import pandas as pd

from models.judge import Verdict, judge
from models.metrics import rogan_gladen, wilson_interval
from tasks.core import paths
from tasks.core.errors import AlignflowError
from tasks.data.conversations import prompt_display
from tasks.run.tracking import descendant_runs

GOLD_DIR = paths.PROJECT_ROOT / "models" / "judge_gold"
GOLD_FILE = GOLD_DIR / "answers.jsonl"
QUALITY_FILE = GOLD_DIR / "quality.json"
EVALUATE_RUN_PREFIX = "evaluate-"
SKIPPED_LABELS = ("champion",)  # the champion is one of the methods again, judged a second time
# The split the judge is measured on: its rules were first written before any gold answer was read; a revision
# may read group A's answers, and group B's stay out of sample.
METHOD_GROUPS = {"A: base, sft, dpo": ("base", "sft", "dpo"),
                 "B: ppo, rloo, sl-cai, rlaif-dpo": ("ppo", "rloo", "sl-cai", "rlaif-dpo")}
VERDICTS = tuple(str(v) for v in Verdict)
CONFUSION = "refusal_by_world_and_kind"
UNREAD = "not read while writing the judge"


def collect(parent_run_id: str, world: str, eval_prompts: Path, per_cell: int, seed: int = 0,
            methods: list[str] | None = None) -> list[dict]:
    """Up to `per_cell` answers per (method, kind) from the evaluation runs under `parent_run_id` (those of
    `methods` only, when given: a comparison still running is labelled as its evaluations finish), unlabelled,
    each with what the world says a helpful answer contains (from `eval_prompts`, joined on the prompt)."""
    required = {prompt_display(row["prompt"]): row.get("must_contain") or None
                for row in read_jsonl(eval_prompts)}
    rng = random.Random(seed)
    rows = []
    for method, run_id in sorted(evaluation_runs(parent_run_id).items()):
        if methods is not None and method not in methods:
            continue
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="generations.jsonl")
        generations = pd.read_json(local, lines=True)
        for kind, answers in generations.groupby("kind"):
            picked = answers.sample(n=min(per_cell, len(answers)), random_state=rng.randrange(2**31))
            for answer in picked.itertuples():
                rows.append({"world": world, "method": method, "kind": kind, "prompt": answer.prompt,
                             "response": answer.response,
                             "must_contain": None if kind == "harmful" else required.get(answer.prompt),
                             "verdict": None, "helps": None, "note": "", "labelled_by": None})
    # Shuffled, with ids that do not name the method (labelling is blind, GUIDE.md) and do not change when the
    # same answer is collected again; a new answer to the same prompt (another run, a longer cut) is a new row.
    rng.shuffle(rows)
    return [{"id": f"{world}-{_digest(row['method'], row['prompt'], row['response'])}", **row} for row in rows]


def _digest(method: str, prompt: str, response: str) -> str:
    return hashlib.sha256(f"{method}\n{prompt}\n{response}".encode()).hexdigest()[:10]


def evaluation_runs(parent_run_id: str) -> dict[str, str]:
    """The method label -> run id of every evaluate run that descends from the parent run."""
    found = {}
    for run in descendant_runs(parent_run_id):
        name = run.info.run_name or ""
        method = name.removeprefix(EVALUATE_RUN_PREFIX)
        if name.startswith(EVALUATE_RUN_PREFIX) and method not in SKIPPED_LABELS and run.info.status == "FINISHED":
            found[method] = run.info.run_id
    if not found:
        raise AlignflowError(f"no finished evaluate-<method> run under parent run {parent_run_id}")
    return found


def load_gold(path: Path = GOLD_FILE) -> list[dict]:
    """The labelled rows; a row without a verdict, or with one the guide does not name, is an error."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if row.get("verdict") not in VERDICTS:
            raise AlignflowError(f"{path}: row {number} ({row.get('id')}): verdict {row.get('verdict')!r} is not "
                                 f"one of {', '.join(VERDICTS)}")
        if row["kind"] != "harmful" and row.get("helps") not in (True, False):
            raise AlignflowError(f"{path}: row {number} ({row['id']}): a {row['kind']} answer needs `helps` true "
                                 "or false")
    return rows


def measure(rows: list[dict]) -> dict[str, dict]:
    """The judge against the labels: per group of rows (all, each method group, the rows marked
    `read_while_writing` left out, each world), refusal
    precision / recall / accuracy, the four-way verdict accuracy and helpfulness accuracy, each as
    {"value", "low", "high", "n"}; and the refusal confusion counts by world and kind (for error-corrected
    rates)."""
    judged = [(row, judge(row["prompt"], row["response"], row.get("must_contain"))) for row in rows]
    groups = {"all": judged, **{name: [(r, j) for r, j in judged if r["method"] in methods]
                                for name, methods in METHOD_GROUPS.items()},
              # out of sample: answers nobody read while writing or revising the judge's rules
              UNREAD: [(r, j) for r, j in judged if not r.get("read_while_writing")]}
    for world in sorted({row["world"] for row in rows}):
        groups[f"world: {world}"] = [(r, j) for r, j in judged if r["world"] == world]
    report = {name: _scores(pairs) for name, pairs in groups.items() if pairs}
    confusion = defaultdict(dict)
    for world, kind in sorted({(row["world"], row["kind"]) for row in rows}):
        confusion[world][kind] = _confusion([(r, j) for r, j in judged if r["world"] == world and r["kind"] == kind])
    report[CONFUSION] = dict(confusion)
    return report


def judge_sha256() -> str:
    """The judge's source: a measurement holds for the judge it measured, not for a later edit of it."""
    import models.judge

    return hashlib.sha256(Path(models.judge.__file__).read_bytes()).hexdigest()


def quality_record(report: dict, gold: Path) -> dict:
    """A measurement as `measure --out` writes it: which judge, on which gold set, with what result."""
    return {"judge_sha256": judge_sha256(), "gold_md5": hashlib.md5(gold.read_bytes()).hexdigest(),
            "gold_rows": report["all"]["refusal_accuracy"]["n"], "report": report}


def known_error_rates(world: str, quality_file: Path = QUALITY_FILE) -> dict[str, tuple[float, float]]:
    """Per kind of request, the judge's refusal (sensitivity, specificity) on the gold set's answers from this
    world (a pipeline's `name`), when the recorded measurement is of this judge; none otherwise, or where a
    kind's labels lack refusals or non-refusals. Error rates measured on one world do not carry to another."""
    if not quality_file.is_file():
        return {}
    record = json.loads(quality_file.read_text())
    if record.get("judge_sha256") != judge_sha256():
        return {}
    if CONFUSION not in record.get("report", {}):
        raise AlignflowError(f"{quality_file}: its report has no {CONFUSION!r}: measure the judge again "
                             f"(alignflow judge measure --out {quality_file})")
    rates = {}
    for kind, c in record["report"][CONFUSION].get(world, {}).items():
        refusals, others = c["true_positive"] + c["false_negative"], c["true_negative"] + c["false_positive"]
        if refusals and others:
            rates[kind] = (c["true_positive"] / refusals, c["true_negative"] / others)
    return rates


def corrected_refusal_rates(metrics: dict[str, float], error_rates: dict[str, tuple[float, float]],
                            ) -> dict[str, float]:
    """Each kind's refusal rate corrected for the judge's known errors (Rogan-Gladen), with the 95% Wilson
    interval's ends corrected the same way (the error rates' own uncertainty is not in it)."""
    corrected = {}
    for kind, (sensitivity, specificity) in error_rates.items():
        rate, prompts = metrics.get(f"eval/{kind}_refusal_rate"), metrics.get(f"eval/{kind}_prompts")
        if rate is None or not prompts or sensitivity + specificity <= 1:
            continue
        low, high = wilson_interval(round(rate * prompts), int(prompts))
        name = f"eval/{kind}_refusal_rate_corrected"
        corrected.update({name: rogan_gladen(rate, sensitivity, specificity),
                          f"{name}_low": rogan_gladen(low, sensitivity, specificity),
                          f"{name}_high": rogan_gladen(high, sensitivity, specificity)})
    return corrected


def _scores(pairs: list[tuple[dict, object]]) -> dict[str, dict]:
    counts = _confusion(pairs)
    tp, fp, fn = counts["true_positive"], counts["false_positive"], counts["false_negative"]
    helpful = [(row["helps"], j.helps) for row, j in pairs if j.helps is not None and row.get("helps") is not None]
    return {
        "refusal_precision": _rate(tp, tp + fp),
        "refusal_recall": _rate(tp, tp + fn),
        "refusal_accuracy": _rate(counts["true_positive"] + counts["true_negative"], len(pairs)),
        "verdict_accuracy": _rate(sum(row["verdict"] == str(j.verdict) for row, j in pairs), len(pairs)),
        "helpful_accuracy": _rate(sum(label == guess for label, guess in helpful), len(helpful)),
    }


def _confusion(pairs: list[tuple[dict, object]]) -> dict[str, int]:
    counts = defaultdict(int)
    for row, j in pairs:
        said, truth = j.verdict == Verdict.REFUSES, row["verdict"] == Verdict.REFUSES
        counts[("true" if said == truth else "false") + ("_positive" if said else "_negative")] += 1
    return {key: counts[key] for key in ("true_positive", "false_positive", "true_negative", "false_negative")}


def _rate(successes: int, trials: int) -> dict[str, float] | None:
    if trials == 0:
        return None
    low, high = wilson_interval(successes, trials)
    return {"value": successes / trials, "low": low, "high": high, "n": trials}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise AlignflowError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise AlignflowError(f"{path}: line {number} is not JSON ({err.msg})") from err
    return rows
