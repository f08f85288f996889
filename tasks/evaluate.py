"""Stage: evaluate a policy on held-out data.

- perplexity of the held-out demonstrations (`sft_eval`);
- greedy generations on the held-out prompts, scored by the refusal detector (`models.safety`):
  refusal rate on harmful requests (higher is safer) and on benign ones (over-refusal, lower is better);
- mean response length in tokens.

The same stage runs under different labels (`evaluate-sft`, later `evaluate-dpo`, …) so every candidate is
measured the same way. A sample of generations is logged as an MLflow table.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from flows.config import PipelineConfig
from models.generation import generate
from models.loading import load_model_and_tokenizer
from models.prompting import prompt_formatter
from models.safety import is_refusal
from models.scoring import perplexity
from tasks.datasets import read_rows
from tasks.stage import Lineage, StageResult, stage_key, stage_run, work_dir
from tasks.tracking import resolve_model_source

STAGE = "evaluate"
SECTIONS = ("eval", "model")


def _input_hashes(policy: StageResult, data: StageResult) -> dict[str, str]:
    return {
        "policy": policy.output_hashes["model"],
        "sft_eval": data.output_hashes["sft_eval"],
        "eval_prompts": data.output_hashes["eval_prompts"],
    }


def evaluate_key(cfg: PipelineConfig, policy: StageResult, data: StageResult, label: str) -> str:
    return stage_key(f"{STAGE}-{label}", cfg, SECTIONS, _input_hashes(policy, data))


def run_evaluate(
    cfg: PipelineConfig, lineage: Lineage, *, policy: StageResult, data: StageResult, label: str
) -> StageResult:
    key = evaluate_key(cfg, policy, data, label)
    stage_dir = work_dir(cfg, f"{STAGE}-{label}", key)
    with stage_run(
        f"{STAGE}-{label}", cfg, lineage, cache_key=key, sections=SECTIONS, parents={"policy": policy.model_uri}
    ) as run:
        source = resolve_model_source(policy.model_uri, stage_dir / "policy")
        model, tokenizer = load_model_and_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code)
        format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)

        demos = read_rows(Path(data.outputs["sft_eval"]))
        ppl = perplexity(model, tokenizer, [format_prompt(p) for p in demos["prompt"]], list(demos["completion"]),
                         batch_size=cfg.eval.batch_size)

        prompts = read_rows(Path(data.outputs["eval_prompts"]))
        responses = generate(model, tokenizer, [format_prompt(p) for p in prompts["prompt"]],
                             max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
        generations = _score(prompts, responses, tokenizer)
        metrics = {"eval/perplexity": ppl, **safety_metrics(generations)}
        mlflow.log_metrics(metrics)
        mlflow.log_table(generations.head(cfg.eval.logged_samples), artifact_file="generations.json")
    return StageResult(
        stage=f"{STAGE}-{label}",
        run_id=run.info.run_id,
        cache_key=key,
        model_uri=policy.model_uri,
        metrics=metrics,
        input_hashes=_input_hashes(policy, data),
    )


def _score(prompts: pd.DataFrame, responses: list[str], tokenizer) -> pd.DataFrame:
    harmful = prompts["harmful"] if "harmful" in prompts else pd.Series([None] * len(prompts))
    return pd.DataFrame(
        {
            "prompt": list(prompts["prompt"]),
            "harmful": list(harmful),
            "response": responses,
            "refused": [is_refusal(r) for r in responses],
            "response_tokens": [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses],
        }
    )


def safety_metrics(generations: pd.DataFrame) -> dict[str, float]:
    """Refusal rates split by the prompt's `harmful` label, and the mean response length."""
    labelled = generations[generations["harmful"].notna()]
    harmful = labelled[labelled["harmful"].astype(bool)]
    benign = labelled[~labelled["harmful"].astype(bool)]
    if harmful.empty or benign.empty:
        raise ValueError("eval_prompts needs both harmful and benign prompts (a boolean `harmful` column)")
    return {
        "eval/harmful_refusal_rate": float(harmful["refused"].mean()),
        "eval/benign_refusal_rate": float(benign["refused"].mean()),
        "eval/response_tokens": float(generations["response_tokens"].mean()),
    }
