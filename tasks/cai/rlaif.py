"""RLAIF: AI preference labels for pairs of policy responses (Bai et al. 2022, section 4.1; Lee et al. 2023).

For every red-team prompt the policy samples two responses (one seed per batch of prompts). The feedback model reads
both under a principle's multiple-choice question and answers "(A)" or "(B)"; the label is read from the
log-probabilities of the two answer labels, not from generated text. Each pair is asked twice, with the
responses swapped, because small models prefer a position more than a response:

    p_first  = P(a preferred | a shown as A)        p_second = P(a preferred | a shown as B)
    soft label  P(a > b) = (p_first + p_second) / 2              agreement = 1 - |p_first - p_second|

A pair is kept when both orders pick the same response and its agreement is at least `rlaif.min_agreement`;
the rest go to `rlaif_dropped.jsonl` with the reason and both probabilities. Kept pairs are written as
prompt/chosen/rejected (ready for the reward model or DPO) with the soft label in `chosen_prob`.
"""

from __future__ import annotations

import mlflow

from tasks.cai.backends import Backend, choice_probability
from tasks.cai.config import CAIConfig, Constitution
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
    return step_key("rlaif_samples", model=models.policy_id, settings=settings,
                    prompt_format=cfg.model.prompt_format, prompt_template=cfg.model.prompt_template)


def labels_key(cai: CAIConfig, models: ModelSources, samples: str, inputs: Inputs) -> str:
    return step_key("rlaif_labels", samples=samples, model=models.feedback_id, options=cai.rlaif.options,
                    seed=cai.seed, constitution=inputs.constitution_sha256, template=inputs.templates["choice"].sha256)


def run_rlaif(cfg: PipelineConfig, lineage: Lineage, *, cai: CAIConfig, models: ModelSources) -> StageResult:
    inputs = Inputs(cai, cfg)
    sampled_key = samples_key(cai, cfg, models)
    key = labels_key(cai, models, sampled_key, inputs)
    samples = ProgressLog(step_dir(cfg, "rlaif-samples", sampled_key) / SAMPLES, key=lambda r: r["id"])
    out = step_dir(cfg, "rlaif-labels", key)
    labels = ProgressLog(out / LABELS, key=lambda r: r["id"])
    with step_run("rlaif", cai, cfg, lineage, key=key, sections=("rlaif", "policy", "feedback", "seed"),
                  inputs=inputs, parents={"policy": models.policy_uri, "feedback": models.feedback_uri}) as run:
        policy = backend_for("policy", cai, cfg, models)
        # One model loaded once when it both answers and judges (the demo; a 7B model would not fit twice).
        feedback = policy if (cai.feedback.kind, models.feedback_id) == (cai.policy.kind, models.policy_id) else None
        try:
            sample_pairs(policy, inputs.prompts, samples, cai=cai)
            pairs = [(pid, prompt, *samples[pid]["responses"]) for pid, prompt in inputs.prompts]
            feedback = feedback or backend_for("feedback", cai, cfg, models)
            written = label_pairs(feedback, [p for p in pairs if not _unlabelable(p[2], p[3])], labels,
                                  constitution=inputs.constitution, template=inputs.templates["choice"],
                                  options=cai.rlaif.options, seed=cai.seed, chunk=cai.feedback.batch_size)
        finally:
            policy.close()
            if feedback is not None and feedback is not policy:
                feedback.close()
        table = build_rlaif_dataset(pairs, labels, min_agreement=cai.rlaif.min_agreement,
                                    prefix=cai.completion_prefix)
        files = {"rlaif_preferences": out / PREFERENCES_FILE, "rlaif_dropped": out / DROPPED_FILE}
        write_jsonl(table["kept"], files["rlaif_preferences"])
        write_jsonl(table["dropped"], files["rlaif_dropped"])
        metrics = {**table["metrics"], "rlaif/labels_generated": float(written),
                   "rlaif/truncated_prompts": float(feedback.truncated_prompts)}
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="rlaif")
    return StageResult(stage="cai-rlaif", run_id=run.info.run_id, cache_key=key, metrics=metrics,
                       outputs={name: str(path) for name, path in files.items()},
                       output_hashes={name: md5_file(path) for name, path in files.items()})


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
                chunk: int) -> int:
    """Ask the feedback model about each (id, prompt, a, b) in both orders; record P(a preferred) for each."""
    def compute(batch):
        principles = [draw_principle(constitution, seed, pid, "rlaif") for pid, *_ in batch]
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


def judge(p_first: float, p_second: float, min_agreement: float) -> tuple[bool, float, str | None]:
    """(both orders pick the same response, agreement, reason to drop or None) from P(a preferred) per order."""
    agreement = 1.0 - abs(p_first - p_second)
    if p_first == 0.5 or p_second == 0.5:
        return False, agreement, "no preference in one order"
    if (p_first > 0.5) != (p_second > 0.5):
        return False, agreement, "the two orders pick different responses"
    if agreement < min_agreement:
        return True, agreement, f"agreement {agreement:.3f} below min_agreement {min_agreement}"
    return True, agreement, None


def build_rlaif_dataset(pairs: list[tuple[str, str, str, str]], labels: ProgressLog, *, min_agreement: float,
                        prefix: str) -> dict:
    """Kept pairs as prompt/chosen/rejected with the soft label, dropped pairs with their reason, and metrics."""
    kept, dropped, agreements, agreed, first_position = [], [], [], 0, []
    for pid, prompt, a, b in pairs:
        row = {"id": pid, "prompt": prompt, "response_a": a, "response_b": b}
        reason = _unlabelable(a, b)
        if reason:
            dropped.append({**row, "reason": reason})
            continue
        label = labels[pid]
        p_first, p_second = label["p_first"], label["p_second"]
        first_position += [p_first, 1.0 - p_second]  # P(the first-shown response) in each order
        same_pick, agreement, reason = judge(p_first, p_second, min_agreement)
        agreements.append(agreement)
        agreed += same_pick
        if reason:
            dropped.append({**row, "reason": reason, "principle": label["principle"], "p_first": round(p_first, 6),
                            "p_second": round(p_second, 6), "agreement": round(agreement, 6)})
            continue
        p_a = (p_first + p_second) / 2
        chosen, rejected = (a, b) if p_a > 0.5 else (b, a)
        kept.append({"prompt": prompt, "chosen": prefix + chosen, "rejected": prefix + rejected,
                     "chosen_prob": round(max(p_a, 1.0 - p_a), 6), "agreement": round(agreement, 6),
                     "principle": label["principle"]})
    labeled = len(agreements)
    metrics = {
        "rlaif/pairs": float(len(pairs)),
        "rlaif/labeled": float(labeled),
        "rlaif/kept": float(len(kept)),
        "rlaif/dropped": float(len(dropped)),
        "rlaif/agreement_rate": agreed / labeled if labeled else 0.0,  # both orders pick the same response
        "rlaif/mean_agreement": sum(agreements) / labeled if labeled else 0.0,
        "rlaif/first_position_prob": sum(first_position) / len(first_position) if first_position else 0.5,
    }
    return {"kept": kept, "dropped": dropped, "metrics": metrics}


def _unlabelable(a: str, b: str) -> str | None:
    if not a or not b:
        return "an empty response"
    if a == b:
        return "identical responses"
    return None
