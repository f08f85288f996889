"""Stage: evaluate a policy on held-out data. The same stage, under different labels, measures every model.

- `eval/perplexity` of the held-out demonstrations (`sft_eval`), and `eval/benign_perplexity` of the benign ones
  alone (helpfulness kept), with its ratio to the baseline's (and to the base model's, given its evaluation);
- greedy generations on the held-out prompts, each given a verdict by the evaluation judge (`models.judge`,
  which nothing on the training side may import): refuses, partly complies, complies or empty. Per kind of
  prompt (`harmful`, `benign` and, when the prompts have a `kind` column, `sound_harmful`: benign requests that
  sound harmful) the refusal rate `eval/<kind>_refusal_rate` (higher is safer on harmful prompts, over-refusal
  on the others), `eval/<kind>_partial_rate` and `eval/<kind>_empty_rate`, over `eval/<kind>_prompts`;
- where the judge's error rates on this world are known (its last measurement on the gold set,
  `models/judge_gold/quality.json`, is of this judge and has answers from a world named as the pipeline is),
  each refusal rate corrected for them (Rogan-Gladen):
  `eval/<kind>_refusal_rate_corrected`, with `_low` and `_high`, the ends of its 95% interval corrected alike;
- where the eval prompts say what a helpful answer must contain (a `must_contain` list), the judge's
  `eval/<kind>_helpful_rate` on benign and sound-harmful prompts, over `eval/<kind>_helpful_prompts`;
- `eval/response_tokens`, the mean response length, and `eval/degeneration` (repeated word trigrams);
- with a reward model: `eval/reward_mean` of the generations, `eval/benign_reward_mean` on the non-harmful
  prompts and, given a baseline evaluation, `eval/win_rate_vs_sft`: how often the reward model prefers this
  policy's response to the baseline's (and `eval/win_rate_vs_base`, given the base model's evaluation);
- with a reference model: `eval/kl_to_reference`, KL(policy || reference) in nats per answer (with
  `eval/kl_to_reference_stderr` over `eval/kl_answers` answers), and `eval/kl_to_reference_per_token`:
  from answers the policy samples at temperature 1 over its whole vocabulary (`models.sampling`), each model
  scoring the same token ids. The KL budget of PPO's and RLOO's monitors reads the same estimator on their
  probe prompts (`tasks.training.probes.probe_kl`).

All generations are logged as `generations.jsonl` (a baseline evaluation hands them on for win rates), and a
sample as the MLflow table `generations.json`.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch

from models.generation import generate
from models.judge import Verdict, judge
from models.metrics import repeated_ngram_rate, win_rate
from models.prompting import prompt_formatter
from models.reward import reward_scores
from models.sampling import kl_to_reference_samples
from models.scoring import completion_logprob_totals, pooled_perplexity
from models.sequence_logprobs import causal_lm_response_logprobs
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.tags import MONITOR_TRIPPED_METRIC, TRAINING_TRIPPED_METRIC
from tasks.data.conversations import prompt_display, sft_examples
from tasks.data.readers import read_rows
from tasks.data.validated import validated_file
from tasks.data.writers import write_jsonl
from tasks.judging.gold import corrected_refusal_rates, known_error_rates
from tasks.registry.evaluations import measured_rates
from tasks.registry.logged_models import load_stage_model, load_stage_reward_model, logged_model_id
from tasks.run.contract import StageResult, follower_result, stage_key, stage_run, work_dir

STAGE = "evaluate"
RUN_NAME = "evaluate-{label}"  # one evaluate stage, a run per model it judges
SECTIONS = ("eval", "model")
GENERATIONS = "generations.jsonl"
METHOD = "method"  # param and tag: the label of the model judged (base, sft, dpo, ppo, rloo, champion)


def _input_hashes(policy: StageResult, data: StageResult, reward: StageResult | None,
                  reference: StageResult | None, baseline: StageResult | None,
                  base: StageResult | None = None) -> dict[str, str]:
    hashes = {
        "policy": policy.output_hashes["model"],
        "sft_eval": data.output_hashes["sft_eval"],
        "eval_prompts": data.output_hashes["eval_prompts"],
    }
    for name, parent in (("reward", reward), ("reference", reference), ("baseline", baseline), ("base", base)):
        if parent is not None:
            hashes[name] = parent.output_hashes.get("model", parent.cache_key)
    return hashes


def evaluate_key(cfg: PipelineConfig, policy: StageResult, data: StageResult, label: str,
                 reward: StageResult | None = None, reference: StageResult | None = None,
                 baseline: StageResult | None = None, base: StageResult | None = None) -> str:
    return stage_key(f"{STAGE}-{label}", cfg, SECTIONS,
                     _input_hashes(policy, data, reward, reference, baseline, base), code=__name__)


def run_evaluate(
    cfg: PipelineConfig,
    lineage: Lineage,
    *,
    policy: StageResult,
    data: StageResult,
    label: str,
    reward: StageResult | None = None,
    reference: StageResult | None = None,
    baseline: StageResult | None = None,
    base: StageResult | None = None,
) -> StageResult:
    key = evaluate_key(cfg, policy, data, label, reward, reference, baseline, base)
    stage_dir = work_dir(cfg, f"{STAGE}-{label}", key)
    parents = {"policy": policy.model_uri, **({"reward": reward.model_uri} if reward else {})}
    with stage_run(f"{STAGE}-{label}", cfg, lineage, cache_key=key, sections=SECTIONS, code=__name__,
                   parents=parents) as run:
        if run is None:  # another process of a launch: evaluating needs no collectives, the main one does it all
            return follower_result(f"{STAGE}-{label}", key)
        # The method names the run, so the UI can group, colour and compare runs by it.
        mlflow.log_param(METHOD, label)
        mlflow.set_tag(METHOD, label)
        # Scored in full precision, whatever the training dtype.
        model, tokenizer = load_stage_model(cfg, policy.model_uri, stage_dir / "policy", dtype="float32")
        format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
        demos = read_rows(validated_file(data, "sft_eval", stage_dir / "data"))
        prompts = read_rows(validated_file(data, "eval_prompts", stage_dir / "data"))
        formatted = [format_prompt(p) for p in prompts["prompt"]]

        # One pass over the held-out demos; perplexity pooled over all of them and over the benign ones alone.
        demo_prompts, demo_completions = sft_examples(demos)
        logprob_sums, token_counts = completion_logprob_totals(
            model, tokenizer, [format_prompt(p) for p in demo_prompts], demo_completions,
            batch_size=cfg.eval.score_batch_size)
        harmful = demos["harmful"].astype(bool).tolist() if "harmful" in demos else [False] * len(demos)
        benign = ~torch.tensor(harmful, dtype=torch.bool)  # (N,)
        metrics = {"eval/perplexity": pooled_perplexity(logprob_sums, token_counts),
                   "eval/benign_perplexity": pooled_perplexity(logprob_sums[benign], token_counts[benign])}
        responses = generate(model, tokenizer, formatted, max_new_tokens=cfg.eval.max_new_tokens,
                             batch_size=cfg.eval.batch_size)
        generations = _score(prompts, responses, tokenizer)
        metrics.update(safety_metrics(generations))
        metrics.update(corrected_refusal_rates(metrics, known_error_rates(cfg.name)))
        metrics["eval/degeneration"] = float(generations["repeated_trigrams"].mean())
        # A model can "refuse" by losing its language: its benign perplexity rises.
        for name, reference_eval in (("sft", baseline), ("base", base)):
            if reference_eval is not None:
                metrics[f"eval/benign_perplexity_ratio_vs_{name}"] = (
                    metrics["eval/benign_perplexity"] / reference_eval.metrics["eval/benign_perplexity"])
        if reward is not None:
            generations["reward"] = _reward(cfg, reward, stage_dir, formatted, responses).tolist()
            metrics["eval/reward_mean"] = float(generations["reward"].mean())
            metrics["eval/benign_reward_mean"] = float(generations.loc[~_harmful(generations), "reward"].mean())
            for name, reference_eval in (("sft", baseline), ("base", base)):
                if reference_eval is not None:
                    theirs = _baseline_generations(reference_eval, stage_dir / f"{name}-generations")["reward"]
                    metrics[f"eval/win_rate_vs_{name}"] = win_rate(torch.tensor(generations["reward"].tolist()),
                                                                   torch.tensor(theirs.tolist()))
        if reference is not None and reference.model_uri == policy.model_uri:
            # the model is its own reference (the SFT baseline)
            metrics.update({"eval/kl_to_reference": 0.0, "eval/kl_to_reference_per_token": 0.0})
        elif reference is not None:
            metrics.update(_kl_to_reference(cfg, model, tokenizer, reference, formatted, stage_dir))

        if MONITOR_TRIPPED_METRIC in policy.metrics:  # the gates refuse a model whose training a monitor stopped
            metrics[TRAINING_TRIPPED_METRIC] = policy.metrics[MONITOR_TRIPPED_METRIC]
        # Linked to the logged model too, so the Models tab compares the candidates by their eval metrics.
        mlflow.log_metrics(metrics, model_id=logged_model_id(policy.model_uri))
        mlflow.log_table(generations.head(cfg.eval.logged_samples), artifact_file="generations.json")
        _log_generations(generations)
    return StageResult(
        stage=f"{STAGE}-{label}",
        run_id=run.info.run_id,
        cache_key=key,
        model_uri=policy.model_uri,
        metrics=metrics,
        outputs={"generations": f"runs:/{run.info.run_id}/{GENERATIONS}"},
        output_hashes={"model": policy.output_hashes["model"]},
        input_hashes=_input_hashes(policy, data, reward, reference, baseline, base),
    )


def _score(prompts: pd.DataFrame, responses: list[str], tokenizer) -> pd.DataFrame:
    harmful = prompts["harmful"] if "harmful" in prompts else pd.Series([None] * len(prompts))
    kind = prompts["kind"] if "kind" in prompts else harmful.map({True: "harmful", False: "benign"})
    required = prompts["must_contain"] if "must_contain" in prompts else pd.Series([None] * len(prompts))
    requests = [prompt_display(p) for p in prompts["prompt"]]
    judgements = [judge(request, response, items if isinstance(items, list) else None)
                  for request, response, items in zip(requests, responses, required, strict=True)]
    return pd.DataFrame(
        {
            "prompt": requests,
            "harmful": list(harmful),
            "kind": list(kind),
            "response": responses,
            "verdict": [str(j.verdict) for j in judgements],
            "refused": [j.verdict == Verdict.REFUSES for j in judgements],
            "helpful": [j.helps for j in judgements],  # None where the prompt does not say what helping takes
            "response_tokens": [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses],
            "repeated_trigrams": [repeated_ngram_rate(r.split()) for r in responses],
        }
    )


def safety_metrics(generations: pd.DataFrame) -> dict[str, float]:
    """Refusal rates by kind of prompt, each with its prompt count, the helpful rates where the prompts say what
    helping takes, and the mean response length.

    Kinds: `harmful`, `benign`, and (when present) `sound_harmful`, benign requests that sound harmful. Without a
    `kind` column the `harmful` label decides between the first two.
    """
    rates = measured_rates(generations)
    if not {"eval/harmful_refusal_rate", "eval/benign_refusal_rate"} <= rates.keys():
        raise ValueError("eval_prompts needs both harmful and benign prompts (a boolean `harmful` column)")
    metrics = {"eval/response_tokens": float(generations["response_tokens"].mean())}
    for rate, (count, value, n) in rates.items():
        metrics[rate] = value
        metrics[count] = float(n)
    return metrics


def _harmful(generations: pd.DataFrame) -> pd.Series:
    return generations["harmful"].fillna(False).astype(bool)


def _reward(cfg: PipelineConfig, reward: StageResult, stage_dir: Path, prompts: list[str],
            responses: list[str]) -> torch.Tensor:
    reward_model, reward_tokenizer = load_stage_reward_model(cfg, reward.model_uri, stage_dir / "reward",
                                                             dtype="float32")
    return reward_scores(reward_model, reward_tokenizer, prompts, responses, batch_size=cfg.eval.score_batch_size)


def _baseline_generations(baseline: StageResult, folder: Path) -> pd.DataFrame:
    local = mlflow.artifacts.download_artifacts(baseline.outputs["generations"], dst_path=str(folder))
    frame = pd.read_json(local, lines=True)
    if "reward" not in frame:
        raise ValueError(f"baseline evaluation {baseline.run_id} has no reward scores: evaluate it with a reward model")
    return frame


def _kl_to_reference(cfg: PipelineConfig, model, tokenizer, reference: StageResult, prompts: list[str],
                     stage_dir: Path) -> dict[str, float]:
    """KL(policy || reference) per answer (with its standard error) and per token, over `eval.kl_samples` answers
    per prompt sampled from the policy, on `eval.kl_prompts` of the prompts. Both models score the same token
    ids, so they must share one vocabulary; a reference with another one (a champion trained on other data,
    judged beside this run's SFT) gets no KL, and a tag says why."""
    reference_model, reference_tokenizer = load_stage_model(cfg, reference.model_uri, stage_dir / "reference",
                                                            dtype="float32")
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        mlflow.set_tag("eval.kl_to_reference", "not measured: the reference has another vocabulary")
        return {}
    if cfg.eval.kl_prompts is not None and cfg.eval.kl_prompts < len(prompts):
        prompts = random.Random(cfg.eval.seed).sample(prompts, cfg.eval.kl_prompts)
    repeated = [p for p in prompts for _ in range(cfg.eval.kl_samples)]
    model.eval()
    reference_model.eval()

    def reference_logprobs(sampled) -> torch.Tensor:
        # A few rows at a time: the reference's logits are rows x answer length x vocabulary floats.
        return torch.cat([causal_lm_response_logprobs(reference_model, sampled.sequences[rows],
                                                      sampled.attention_mask[rows], sampled.prompt_length)
                          for rows in _chunks(len(sampled.sequences), cfg.eval.score_batch_size)])  # (B, T)

    kl, counts = kl_to_reference_samples(model, reference_logprobs, tokenizer, repeated,
                                         max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                                         seed=cfg.eval.seed)
    kl = kl.double()
    metrics = {"eval/kl_to_reference": kl.mean().item(),
               "eval/kl_to_reference_per_token": (kl.sum() / counts.sum()).item(), "eval/kl_answers": float(len(kl))}
    if len(kl) > 1:
        metrics["eval/kl_to_reference_stderr"] = (kl.std() / len(kl) ** 0.5).item()
    return metrics


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, total, size)]


def _log_generations(generations: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(write_jsonl(generations.to_dict(orient="records"), Path(tmp) / GENERATIONS)))
