"""RLAIF: AI preference labels for pairs of responses (Bai et al. 2022, section 4.1; Lee et al. 2023).

The pairs are two sampled policy responses per red-team prompt (`rlaif.pairs: samples`), or a prompt's original
response and its final revision (`revisions`: the labeler, not the assumption that a revision is better, picks).
The feedback model reads both under a principle's multiple-choice question and answers "(A)" or "(B)"; the label
is read from the log-probabilities of the two answer labels, not from generated text. Each pair is asked twice,
with the responses swapped, because small models prefer a position more than a response. Calibration: with
P(A) = sigmoid(t + b) for a preference t and a position bias b, the two orders give log-odds t + b and t - b
for response a, so their mean is the bias-free t and half their difference the bias:

    l_first  = logit P(a preferred | a shown as A)      l_second = logit P(a preferred | a shown as B)
    P(a > b) = sigmoid((l_first + l_second) / 2)        position bias = (l_first - l_second) / 2

With `critique.helpful` and `revisions`, the helpful prompts' answers and their revisions are pairs too, when
exactly one of the two declines: helpful-versus-over-refusal pairs, asked under the principles for helpful
prompts, so the labels teach where refusing stops as well as where it starts.

A pair is kept when its calibrated P(chosen) reaches `rlaif.min_confidence`: pairs are not dropped only
because the raw orders disagree, which a position bias larger than the preference always makes them do. The
rest go to `rlaif_dropped.jsonl` with the reason and both probabilities. Kept pairs are written as
prompt/chosen/rejected (ready for the reward model or DPO) with the soft label in `chosen_prob`. How well the
calibration worked is measured where an independent check exists: on red-team pairs where exactly one response
declines (the refusal detector), how often the raw first order and the calibrated label pick the refusal; on
helpful pairs, how often they pick the answer that does not decline.
"""

from __future__ import annotations

import math

import mlflow

from models.safety import is_refusal
from tasks.cai import supervised
from tasks.cai.backends import Backend, choice_probability, generated_tokens
from tasks.cai.config import CAIConfig, Constitution, PromptSet
from tasks.cai.progress import ProgressLog
from tasks.cai.prompts import Template, derived_seed, draw_principle
from tasks.cai.steps import Inputs, ModelSources, backend_for, step_dir, step_key, step_run
from tasks.core.config import PipelineConfig
from tasks.core.hashing import md5_file
from tasks.core.lineage import Lineage
from tasks.data.writers import write_jsonl
from tasks.run.contract import StageResult

SAMPLES, LABELS = "samples.jsonl", "labels.jsonl"
PREFERENCES_FILE, DROPPED_FILE = "rlaif_preferences.jsonl", "rlaif_dropped.jsonl"


def samples_key(cai: CAIConfig, cfg: PipelineConfig, models: ModelSources) -> str:
    # The batch size is in: each batch of prompts is sampled with one seed.
    settings = {"temperature": cai.rlaif.temperature, "max_new_tokens": cai.rlaif.max_new_tokens, "stop": cai.stop,
                "seed": cai.seed, "batch_size": cai.policy.batch_size}
    return step_key("rlaif_samples", code=__name__, model=models.policy_id, settings=settings,
                    prompt_format=cfg.model.prompt_format, prompt_template=cfg.model.prompt_template)


def labels_key(cai: CAIConfig, models: ModelSources, samples: str, inputs: Inputs) -> str:
    return step_key("rlaif_labels", code=__name__, samples=samples, model=models.feedback_id, options=cai.rlaif.options,
                    seed=cai.seed, constitution=inputs.constitution_sha256, template=inputs.templates["choice"].sha256)


def run_rlaif(cfg: PipelineConfig, lineage: Lineage, *, cai: CAIConfig, models: ModelSources,
              responses: StageResult | None = None, revisions: StageResult | None = None) -> StageResult:
    inputs = Inputs(cai, cfg)
    from_revisions = cai.rlaif.pairs == "revisions"
    if from_revisions and (responses is None or revisions is None):
        raise ValueError("rlaif.pairs=revisions needs the respond and critique_revise results")
    sampled_key = (step_key("rlaif_revision_pairs", code=__name__, responses=responses.cache_key,
                            revisions=revisions.cache_key, rounds=cai.critique.rounds)
                   if from_revisions else samples_key(cai, cfg, models))
    key = labels_key(cai, models, sampled_key, inputs)
    samples = ProgressLog(step_dir(cfg, "rlaif-samples", sampled_key) / SAMPLES, key=lambda r: r["id"])
    out = step_dir(cfg, "rlaif-labels", key)
    labels = ProgressLog(out / LABELS, key=lambda r: r["id"])
    with step_run("rlaif", cai, cfg, lineage, key=key, code=__name__, sections=("rlaif", "policy", "feedback", "seed"),
                  inputs=inputs, parents={"policy": models.policy_uri, "feedback": models.feedback_uri}) as run:
        policy = None if from_revisions else backend_for("policy", cai, cfg, models)
        # One model loaded once when it both answers and judges (the demo; a 7B model would not fit twice).
        same_model = (cai.feedback.kind, models.feedback_id) == (cai.policy.kind, models.policy_id)
        feedback = policy if same_model else None
        try:
            helpful_ids: set[str] = set()
            if from_revisions:
                pairs = revision_pairs(inputs.prompts, responses, revisions, cai.critique.rounds)
                if cai.critique.helpful:
                    helpful = revision_pairs(inputs.helpful_prompts, responses, revisions, cai.critique.rounds)
                    pairs, helpful_ids = pairs + helpful, {pid for pid, *_ in helpful}
            else:
                sample_pairs(policy, inputs.prompts, samples, cai=cai)
                pairs = [(pid, prompt, *samples[pid]["responses"]) for pid, prompt in inputs.prompts]
            feedback = feedback or backend_for("feedback", cai, cfg, models)
            written = label_pairs(feedback, [p for p in pairs if not _unlabelable(p, helpful_ids)], labels,
                                  constitution=inputs.constitution, template=inputs.templates["choice"],
                                  options=cai.rlaif.options, seed=cai.seed, chunk=cai.feedback.batch_size,
                                  helpful_ids=helpful_ids)
        finally:
            for backend in {id(b): b for b in (policy, feedback) if b is not None}.values():
                backend.close()
        table = build_rlaif_dataset(pairs, labels, min_confidence=cai.rlaif.min_confidence,
                                    prefix=cai.completion_prefix, helpful_ids=helpful_ids)
        files = {"rlaif_preferences": out / PREFERENCES_FILE, "rlaif_dropped": out / DROPPED_FILE}
        write_jsonl(table["kept"], files["rlaif_preferences"])
        write_jsonl(table["dropped"], files["rlaif_dropped"])
        metrics = {**table["metrics"], "rlaif/labels_generated": float(written),
                   "rlaif/truncated_prompts": float(feedback.truncated_prompts),
                   **generated_tokens("rlaif", policy, feedback)}
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="rlaif")
    return StageResult(stage="cai-rlaif", run_id=run.info.run_id, cache_key=key, metrics=metrics,
                       outputs={name: str(path) for name, path in files.items()},
                       output_hashes={name: md5_file(path) for name, path in files.items()})


def revision_pairs(prompts: list[tuple[str, str]], responses: StageResult, revisions: StageResult,
                   rounds: int) -> list[tuple[str, str, str, str]]:
    """(id, prompt, original, final revision) for every prompt in `prompts`."""
    initial = supervised.responses_of(responses)
    final = {pid: supervised.final_revision(records)
             for pid, records in supervised.rounds_of(revisions, rounds).items()}
    return [(pid, prompt, initial[pid], final.get(pid, "")) for pid, prompt in prompts]


def sample_pairs(policy: Backend, prompts: list[tuple[str, str]], samples: ProgressLog, *, cai: CAIConfig) -> int:
    """Two responses per prompt. Each batch (a fixed slice of the prompts) has its own seed, derived from the
    run's seed and the batch's prompt ids, so a resumed run samples exactly what an uninterrupted one would."""
    def compute(batch):
        seed = derived_seed(cai.seed, ",".join(pid for pid, _ in batch), "rlaif-sample")
        responses = policy.sample([policy.format_request(prompt) for _, prompt in batch], n=2, seed=seed,
                                  max_new_tokens=cai.rlaif.max_new_tokens, temperature=cai.rlaif.temperature)
        return [{"id": pid, "responses": [t.strip() for t in pair]}
                for (pid, _), pair in zip(batch, responses, strict=True)]

    return samples.fill(prompts, key=lambda item: item[0], compute=compute, chunk=cai.policy.batch_size)


def label_pairs(feedback: Backend, pairs: list[tuple[str, str, str, str]], labels: ProgressLog, *,
                constitution: Constitution, template: Template, options: tuple[str, str], seed: int,
                chunk: int, helpful_ids: set[str] = frozenset()) -> int:
    """Ask the feedback model about each (id, prompt, a, b) in both orders, under a principle for its prompt set
    (helpful for ids in `helpful_ids`, red-team otherwise); record P(a preferred) for each."""
    def prompt_set(pid: str) -> PromptSet:
        return "helpful" if pid in helpful_ids else "red_team"

    def compute(batch):
        principles = [draw_principle(constitution, seed, pid, "rlaif", prompt_set(pid)) for pid, *_ in batch]
        first = [template.render(prompt=prompt, question=principle.preference_question, response_a=a, response_b=b)
                 for (_, prompt, a, b), principle in zip(batch, principles, strict=True)]
        second = [template.render(prompt=prompt, question=principle.preference_question, response_a=b, response_b=a)
                  for (_, prompt, a, b), principle in zip(batch, principles, strict=True)]
        logprobs = feedback.option_logprobs(first + second, options)
        n = len(batch)
        return [{"id": pid, "principle": principle.name,
                 "p_first": choice_probability(logprobs[i]),  # a is option 1: P(option 1)
                 "p_second": 1.0 - choice_probability(logprobs[n + i]),  # a is option 2: P(option 2)
                 "logprobs_first": logprobs[i], "logprobs_second": logprobs[n + i]}
                for i, ((pid, *_), principle) in enumerate(zip(batch, principles, strict=True))]

    return labels.fill(pairs, key=lambda pair: pair[0], compute=compute, chunk=chunk)


def judge(p_first: float, p_second: float, min_confidence: float) -> tuple[float, float, str | None]:
    """(calibrated P(a preferred), position bias in log-odds towards the first-shown response, reason to drop or
    None) from P(a preferred) in each order (see the module docstring)."""
    l_first, l_second = _logit(p_first), _logit(p_second)
    p_a = 1.0 / (1.0 + math.exp(-(l_first + l_second) / 2))
    bias = (l_first - l_second) / 2
    if abs(p_a - 0.5) < 1e-6:  # symmetric orders cancel to 0.5 up to float noise, which must not pick a side
        return 0.5, bias, "no preference once calibrated"
    if max(p_a, 1.0 - p_a) < min_confidence:
        return p_a, bias, f"calibrated P(chosen) {max(p_a, 1.0 - p_a):.3f} below min_confidence {min_confidence}"
    return p_a, bias, None


def build_rlaif_dataset(pairs: list[tuple[str, str, str, str]], labels: ProgressLog, *, min_confidence: float,
                        prefix: str, helpful_ids: set[str] = frozenset()) -> dict:
    """Kept pairs as prompt/chosen/rejected with the soft label, dropped pairs with their reason, and metrics."""
    kept, dropped, biases, agreed, first_position = [], [], [], 0, []
    # Did the label pick what the prompt set wants, on pairs where exactly one response declines: the refusal
    # on a red-team prompt, the answer that does not decline on a helpful one.
    checks = {(group, order): [] for group in ("refusal", "helpful") for order in ("raw", "calibrated")}
    for pid, prompt, a, b in pairs:
        row = {"id": pid, "prompt": prompt, "response_a": a, "response_b": b}
        reason = _unlabelable((pid, prompt, a, b), helpful_ids)
        if reason:
            dropped.append({**row, "reason": reason})
            continue
        label = labels[pid]
        p_first, p_second = label["p_first"], label["p_second"]
        first_position += [p_first, 1.0 - p_second]  # P(the first-shown response) in each order
        agreed += (p_first > 0.5) == (p_second > 0.5)
        p_a, bias, reason = judge(p_first, p_second, min_confidence)
        biases.append(bias)
        a_refuses = is_refusal(a)
        if a_refuses != is_refusal(b):
            group, wanted = ("helpful", not a_refuses) if pid in helpful_ids else ("refusal", a_refuses)
            checks[group, "raw"].append((p_first > 0.5) == wanted)
            checks[group, "calibrated"].append((p_a > 0.5) == wanted)
        if reason:
            dropped.append({**row, "reason": reason, "principle": label["principle"], "p_first": round(p_first, 6),
                            "p_second": round(p_second, 6), "p_a_calibrated": round(p_a, 6)})
            continue
        chosen, rejected = (a, b) if p_a > 0.5 else (b, a)
        kept.append({"prompt": prompt, "chosen": prefix + chosen, "rejected": prefix + rejected,
                     "chosen_prob": round(max(p_a, 1.0 - p_a), 6), "position_bias": round(bias, 6),
                     "principle": label["principle"]})
    labeled = len(biases)
    metrics = {
        "rlaif/pairs": float(len(pairs)),
        "rlaif/labeled": float(labeled),
        "rlaif/kept": float(len(kept)),
        "rlaif/dropped": float(len(dropped)),
        "rlaif/agreement_rate": agreed / labeled if labeled else 0.0,  # both raw orders pick the same response
        "rlaif/first_position_prob": sum(first_position) / len(first_position) if first_position else 0.5,
        "rlaif/position_bias_logodds": sum(biases) / labeled if labeled else 0.0,
        "rlaif/refusal_pairs": float(len(checks["refusal", "raw"])),
        "rlaif/helpful_pairs": float(len(checks["helpful", "raw"])),
    }
    for (group, order), picked in checks.items():
        if picked:  # the detector's check of the labels: no such pairs, no number
            metrics[f"rlaif/{group}_preferred_{order}"] = sum(picked) / len(picked)
    return {"kept": kept, "dropped": dropped, "metrics": metrics}


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1.0 - 1e-9)  # a label read as certain still has finite log-odds
    return math.log(p / (1.0 - p))


def _unlabelable(pair: tuple[str, str, str, str], helpful_ids: set[str]) -> str | None:
    pid, _, a, b = pair
    if not a or not b:
        return "an empty response"
    if a == b:
        return "identical responses"
    if pid in helpful_ids and is_refusal(a) == is_refusal(b):
        return "a helpful prompt's pair where not exactly one response declines"
    return None
