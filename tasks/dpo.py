"""Stage: Direct Preference Optimization with TRL's `DPOTrainer`, starting from and anchored to the SFT model.

The reference is the SFT model. Its log-probabilities are computed once per (reference weights, data,
tokenization) and reused from MLflow (`tasks.training.reference_logps`), so no second copy of the model is kept in
memory. With LoRA the reference is the adapter-disabled base, again without a copy. `dpo.loss_type` picks
sigmoid (DPO), ipo or hinge; `dpo.sft_weight` adds an NLL term on the chosen responses; `dpo.balance_refusals`
repeats pairs until as many prefer a refusal as prefer help (`tasks.data.sampling`).
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
from trl import DPOConfig

from models.prompting import prompt_formatter
from tasks.core.config import PipelineConfig
from tasks.core.hashing import md5_file
from tasks.core.lineage import Lineage
from tasks.core.tags import TAG_PREFIX
from tasks.data.preferences import preference_dataset
from tasks.data.sampling import balanced_file
from tasks.data.validated import validated_file
from tasks.registry.logged_models import load_chain, log_hf_model, model_chain
from tasks.run.contract import StageResult, follower_result, stage_key, stage_run, work_dir
from tasks.run.ranks import is_main_process
from tasks.training.reference_logps import CachedReferenceDPOTrainer, ReferenceLogpsCache, reference_key
from tasks.training.trainer import (
    callbacks,
    computes_in_bf16,
    final_log,
    peft_config,
    train_and_save,
    training_arguments,
)

STAGE = "dpo"
SECTIONS = ("dpo", "model", "validation")


def _input_hashes(sft: StageResult, data: StageResult) -> dict[str, str]:
    return {"sft": sft.output_hashes["model"], "preferences_train": data.output_hashes["preferences_train"]}


def dpo_key(cfg: PipelineConfig, sft: StageResult, data: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, _input_hashes(sft, data), code=__name__)


def run_dpo(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult) -> StageResult:
    key = dpo_key(cfg, sft, data)
    stage_dir = work_dir(cfg, STAGE, key)
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, code=__name__,
                   parents={"sft": sft.model_uri}) as run:
        sft_chain = model_chain(sft.model_uri, stage_dir / "sft")
        model, tokenizer = load_chain(cfg, sft_chain)
        pairs, balance = _training_pairs(cfg, data, stage_dir)
        # The SFT model is the reference: its files (weights and any adapters) and the pairs key the log-prob cache.
        reference_cache = _setup_reference_cache(cfg, sft_chain, md5_file(pairs), stage_dir)
        started = time.perf_counter()
        trainer = _setup_trainer(cfg, model, tokenizer, pairs, stage_dir / "checkpoints", reference_cache)
        setup_seconds = time.perf_counter() - started
        hf_dir = train_and_save(trainer, tokenizer, stage_dir, sft.model_uri)
        if run is None:  # another process of a launch: it trained; the main one saves, logs and reports
            return follower_result(STAGE, key)
        model_uri = log_hf_model(hf_dir, cfg, STAGE)
        metrics = {
            **_final_metrics(trainer),
            **{f"dpo/pairs_{name}": float(count) for name, count in balance.items()},
            "dpo/reference_cache_hit": float(reference_cache.hit_run_id is not None),
            "dpo/reference_setup_seconds": setup_seconds,
        }
        mlflow.log_metrics(metrics)
    return StageResult(
        stage=STAGE,
        run_id=run.info.run_id,
        cache_key=key,
        model_uri=model_uri,
        metrics=metrics,
        output_hashes={"model": key},
        input_hashes=_input_hashes(sft, data),
    )


def _training_pairs(cfg: PipelineConfig, data: StageResult, stage_dir: Path) -> tuple[Path, dict[str, int]]:
    """The validated pairs, balanced with `dpo.balance_refusals` (and the balance's counts)."""
    validated = validated_file(data, "preferences_train", stage_dir / "data")
    if not cfg.dpo.balance_refusals:
        return validated, {}
    balanced = stage_dir / "balanced" / validated.name
    return balanced, balanced_file(validated, balanced)


def _setup_reference_cache(cfg: PipelineConfig, reference_chain: list[str], pairs_md5: str, stage_dir: Path):
    tokenization = {
        "max_length": cfg.validation.max_length,
        "prompt_format": cfg.model.prompt_format,
        "prompt_template": cfg.model.prompt_template,
    }
    parts = reference_key(reference_chain, pairs_md5, tokenization, "bf16" if computes_in_bf16(cfg.dpo) else "fp32")
    if is_main_process():  # the process that tracks the stage's run
        mlflow.set_tags({f"{TAG_PREFIX}ref_logps.{name}": value for name, value in parts.items() if name != "key"})
    return ReferenceLogpsCache(parts["key"], stage_dir / "reference_logps")


def _setup_trainer(cfg: PipelineConfig, model, tokenizer, train_file: Path, checkpoint_dir: Path,
                   reference_cache: ReferenceLogpsCache) -> CachedReferenceDPOTrainer:
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    losses, weights = [cfg.dpo.loss_type], [1.0]
    if cfg.dpo.sft_weight > 0:
        losses.append("sft")
        weights.append(cfg.dpo.sft_weight)
    args = DPOConfig(
        **training_arguments(cfg.dpo, checkpoint_dir),
        beta=cfg.dpo.beta,
        loss_type=losses,
        loss_weights=weights,
        max_length=cfg.validation.max_length,
        precompute_ref_log_probs=True,
    )
    return CachedReferenceDPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=preference_dataset(train_file, format_prompt),
        processing_class=tokenizer,
        peft_config=peft_config(cfg.dpo.lora, model.config.num_hidden_layers),
        callbacks=callbacks(STAGE),
        reference_cache=reference_cache,
    )


def _final_metrics(trainer) -> dict[str, float]:
    last = final_log(trainer)
    metrics = {"dpo/final_loss": float(last["loss"]), "dpo/global_step": float(trainer.state.global_step)}
    for name in ("rewards/accuracies", "rewards/margins"):
        if name in last:
            metrics[f"dpo/final_{name.split('/')[1]}"] = float(last[name])
    return metrics
