"""The PPO stages' recipe (`ppo`, and `safe_ppo` with a cost model and a Lagrange multiplier): our own PPO
(`models.ppo`) on the SFT model plus a value head, rewarded by the reward model, penalised per token by its KL to
the frozen SFT reference; under PPO-Lagrangian also charged lambda times the cost model's cost (Safe RLHF).

Every iteration logs reward mean/std, KL, entropy, clip fraction, approximate KL, value loss, explained
variance and response length; every `ppo.sample_table_steps` a table of sample completions with their rewards.
Checkpoints (policy, value head, optimizer, RNG, step, KL controller, lambda) go through accelerate every
`ppo.save_steps`; a rerun resumes from the last complete one. Metrics are named after the stage (`ppo/kl`,
`safe_ppo/kl`); PPO-Lagrangian adds `<stage>/lagrangian/lambda`, `<stage>/cost/mean` and `<stage>/cost/limit`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import get_peft_model

from models.checkpoints import (
    complete_checkpoints,
    last_complete_checkpoint,
    prune_checkpoints,
    save_complete_state,
)
from models.failpoints import failpoint
from models.lagrangian import LagrangeMultiplier
from models.metrics import correlation
from models.ppo import PPOHyperparams, PPOTrainer, sample_prompts
from models.prompting import prompt_formatter
from models.reward import reward_scores
from models.saving import save_trained_model, submodule_weights
from models.value_head import PolicyWithValueHead, SeparateCritic, save_value_head
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.tags import RESUMED_FROM_TAG
from tasks.core.training_sections import SafePPOSection
from tasks.data.probes import Probe, probe_set
from tasks.data.readers import read_rows
from tasks.data.rl_inputs import check_same_tokenizer, training_prompts
from tasks.data.validated import validated_file
from tasks.registry.logged_models import load_chain, load_stage_reward_model, log_hf_model, model_chain
from tasks.run.contract import StageResult, follower_result, stage_run, work_dir
from tasks.run.ranks import is_main_process, process_rank
from tasks.training.curves import log_reward_and_kl
from tasks.training.monitoring import MonitoredTraining
from tasks.training.probes import probe_kl, run_probe
from tasks.training.rewards import ComposedReward, kinds_by_prompt
from tasks.training.trainer import gathered_weights, peft_config

log = logging.getLogger(__name__)

_HYPERPARAMS = tuple(PPOHyperparams.__dataclass_fields__)


def run_ppo_stage(stage: str, cfg: PipelineConfig, lineage: Lineage, *, key: str, sections: tuple[str, ...],
                  code: str, input_hashes: dict[str, str], sft: StageResult, data: StageResult, reward: StageResult,
                  cost: StageResult | None = None, lagrangian: SafePPOSection | None = None) -> StageResult:
    """The whole stage under the name `stage` (its run, metrics, work folder and logged model), keyed by the
    calling stage module (`key`, `code`). With `cost` and `lagrangian` it is PPO-Lagrangian."""
    stage_dir = work_dir(cfg, stage, key)
    parents = {"sft": sft.model_uri, "reward": reward.model_uri, **({"cost": cost.model_uri} if cost else {})}
    with stage_run(stage, cfg, lineage, cache_key=key, sections=sections, parents=parents, code=code) as run:
        preferences = read_rows(validated_file(data, "preferences_train", stage_dir / "data"))
        prompts = training_prompts(preferences, "PPO", data.outputs["preferences_train"])
        probe = probe_set(preferences, cfg.ppo.monitors.probe_size, cfg.ppo.seed)
        trainer, tokenizer = setup_ppo_trainer(cfg, sft, reward, stage_dir, preferences,
                                               source=data.outputs["preferences_train"], cost=cost,
                                               lagrangian=lagrangian)
        metrics = _train(cfg, stage, trainer, prompts, probe, stage_dir / "checkpoints")
        weights = gathered_weights(trainer.accelerator, trainer.model)  # every process: a collective where sharded
        if run is None:  # another process of a launch: it trained; the main one saves, logs and reports
            return follower_result(stage, key)
        hf_dir = _save_final(trainer, tokenizer, stage_dir / "hf_model", sft.model_uri, weights)
        model_uri = log_hf_model(hf_dir, cfg, stage)
        mlflow.log_metrics(metrics)
    return StageResult(stage=stage, run_id=run.info.run_id, cache_key=key, model_uri=model_uri, metrics=metrics,
                       output_hashes={"model": key}, input_hashes=input_hashes)


def setup_ppo_trainer(cfg: PipelineConfig, sft: StageResult, reward: StageResult, stage_dir: Path,
                      preferences: pd.DataFrame, source: str, cost: StageResult | None = None,
                      lagrangian: SafePPOSection | None = None):
    # Value-head init and rollout sampling: the same seed gives the same run. Each rank of a launch gets its own
    # seed (seed + rank), or every rank would sample the same rollouts; the ranks' weights still start alike,
    # since preparing the model for distributed training copies rank 0's to all. (The rank is read from the
    # launcher's environment: a PartialState made here, before the Accelerator, would not join the group.)
    set_seed(cfg.ppo.seed + process_rank())
    sft_chain = model_chain(sft.model_uri, stage_dir / "sft")
    reward_chain = model_chain(reward.model_uri, stage_dir / "reward")
    policy, tokenizer = load_chain(cfg, sft_chain)
    reward_model, reward_tokenizer = load_stage_reward_model(cfg, reward.model_uri, stage_dir / "reward",
                                                             dtype="float32")
    check_same_tokenizer(tokenizer, reward_tokenizer, sft.model_uri, reward.model_uri)
    reward_model.eval()

    lora = peft_config(cfg.ppo.lora, policy.config.num_hidden_layers)
    reference = None  # with LoRA the reference is the policy with its adapters disabled: no second copy
    if lora is not None:
        policy = get_peft_model(policy, lora)
    else:
        reference, _ = load_chain(cfg, sft_chain)
        reference.requires_grad_(False)
    critic = None  # "value_head": the head on the policy
    if cfg.ppo.critic == "separate":
        critic = SeparateCritic.from_reward_model(reward_chain[0], adapters=reward_chain[1:])
    elif cfg.ppo.critic == "reward_model":
        critic = SeparateCritic.sharing_reward_model(reward_model)

    def score(prompts: list[str], responses: list[str]):
        return reward_scores(reward_model, reward_tokenizer, prompts, responses, batch_size=cfg.ppo.rollout_batch_size)

    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    composed = ComposedReward(cfg.ppo.reward_functions, score,
                              kinds_by_prompt(preferences, format_prompt, cfg.ppo.reward_functions, source))
    hyperparams = PPOHyperparams(**{name: getattr(cfg.ppo, name) for name in _HYPERPARAMS})
    cost_fn, multiplier, cost_model = None, None, None
    if cost is not None:
        cost_model, cost_tokenizer = load_stage_reward_model(cfg, cost.model_uri, stage_dir / "cost", dtype="float32")
        check_same_tokenizer(tokenizer, cost_tokenizer, sft.model_uri, cost.model_uri)
        cost_model.eval()

        def cost_fn(prompts: list[str], responses: list[str]):
            return reward_scores(cost_model, cost_tokenizer, prompts, responses, batch_size=cfg.ppo.rollout_batch_size)

        multiplier = LagrangeMultiplier(lagrangian.lambda_init, lagrangian.lambda_lr, lagrangian.cost_limit,
                                        lagrangian.lambda_max)
    trainer = PPOTrainer(PolicyWithValueHead(policy), tokenizer, composed, hyperparams, reference=reference,
                         critic=critic, accelerator=Accelerator(cpu=False), cost_fn=cost_fn, lagrangian=multiplier)
    for scorer in (reward_model, cost_model):
        if scorer is not None:
            scorer.to(trainer.accelerator.device)
    return trainer, tokenizer


def _train(cfg: PipelineConfig, stage: str, trainer: PPOTrainer, prompts: list, probe: Probe | None,
           checkpoint_dir: Path) -> dict[str, float]:
    format_prompt = prompt_formatter(trainer.tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    main = is_main_process()  # under a multi-process launch every process trains, the main one tracks
    monitored = _monitored_training(cfg, stage, trainer, probe, format_prompt, main)
    resume_from = last_complete_checkpoint(checkpoint_dir)
    if resume_from is not None:
        trainer.accelerator.load_state(str(resume_from))
        log.info("Resuming %s from complete checkpoint %s (step %d)", stage, resume_from, trainer.counter.step)
        if main:
            mlflow.set_tag(RESUMED_FROM_TAG, str(trainer.counter.step))
    started, totals, metrics = time.perf_counter(), {"rollout": 0.0, "update": 0.0, "tokens": 0.0}, {}
    curves: dict[str, list] = {"step": [], "reward": [], "kl": []}
    while trainer.counter.step < cfg.ppo.steps:
        step = trainer.counter.step
        drawn = sample_prompts(prompts, cfg.ppo.rollout_batch_size, cfg.ppo.seed, step, cfg.ppo.samples_per_prompt)
        batch = [format_prompt(p) for p in drawn]
        if monitored:
            monitored.before_step(step, trainer.accelerator.unwrap_model(trainer.model))
        metrics, rollout = trainer.step(batch)
        totals["rollout"] += metrics["rollout_seconds"]
        totals["update"] += metrics["update_seconds"]
        totals["tokens"] += metrics["generated_tokens"]
        if main:
            _log_step(cfg, stage, step, metrics, rollout, trainer.reward_fn.last_terms)
        for name, value in (("step", step), ("reward", metrics["reward_mean"]), ("kl", metrics["kl"])):
            curves[name].append(value)
        if monitored:
            monitored.after_step(step, _measurements(metrics, rollout))
            if monitored.should_stop:
                break
        # A state a monitor doubts is not checkpointed: the checkpoints stay ones to go back to.
        due = (step + 1) % cfg.ppo.save_steps == 0 or step + 1 == cfg.ppo.steps
        if due and not (monitored and monitored.monitor.unhealthy):
            save_complete_state(trainer.accelerator, checkpoint_dir, step + 1)
            if main:
                prune_checkpoints(checkpoint_dir, keep=2)
        failpoint("ppo.step")
    mlflow.flush_async_logging()
    elapsed = time.perf_counter() - started
    result = {
        f"{stage}/final_reward_mean": metrics.get("reward_mean", float("nan")),
        f"{stage}/final_kl": metrics.get("kl", float("nan")),
        f"{stage}/steps": float(trainer.counter.step),
        f"{stage}/rollout_share": totals["rollout"] / max(totals["rollout"] + totals["update"], 1e-9),
        f"{stage}/generated_tokens": totals["tokens"],  # this process's rollouts in this run
        f"{stage}/generated_tokens_per_second": totals["tokens"] / max(totals["rollout"], 1e-9),
        f"{stage}/seconds": elapsed,
    }
    if trainer.lagrangian is not None:
        result.update({f"{stage}/final_lambda": trainer.lagrangian.value,
                       f"{stage}/final_cost_mean": metrics.get("cost/mean", float("nan"))})
    if monitored:
        kept = _back_to_healthy(stage, trainer, monitored, checkpoint_dir) if monitored.should_stop else None
        result.update(monitored.result_metrics(kept))
    if main and curves["step"]:
        log_reward_and_kl(curves["step"], curves["reward"], curves["kl"], title=f"{stage}: reward and KL per step",
                          trip_step=monitored.trip.step if monitored and monitored.trip else None)
    return result


def _monitored_training(cfg: PipelineConfig, stage: str, trainer: PPOTrainer, probe: Probe | None, format_prompt,
                        main: bool) -> MonitoredTraining | None:
    section = cfg.ppo.monitors
    if not section.enabled:
        return None

    def run(step: int) -> dict[str, float]:
        model = trainer.accelerator.unwrap_model(trainer.model).policy
        return run_probe(model, trainer.tokenizer, probe, format_prompt, trainer.reward_fn.score,
                         max_new_tokens=cfg.ppo.max_new_tokens, batch_size=cfg.ppo.rollout_batch_size,
                         min_words=section.probe_min_words)

    def kl(step: int) -> float:
        def reference_logprobs(sampled) -> torch.Tensor:
            return trainer.reference_logprobs(sampled.sequences, sampled.attention_mask, sampled.prompt_length, 1.0)

        return probe_kl(trainer.accelerator.unwrap_model(trainer.model).policy, reference_logprobs,
                        trainer.tokenizer, probe, format_prompt, max_new_tokens=cfg.ppo.max_new_tokens,
                        batch_size=cfg.ppo.rollout_batch_size, seed=cfg.ppo.seed)

    monitored = MonitoredTraining(section, stage, run if probe is not None else None,
                                  kl_probe=kl if probe is not None else None, track=main)
    trainer.accelerator.register_for_checkpointing(monitored.monitor)  # baselines and streaks survive a resume
    return monitored


def _measurements(metrics: dict[str, float], rollout) -> dict[str, float]:
    """A step's measurements for the monitors. Not the rollout's KL: it is taken at the sampling temperature; the
    KL budget reads the probe's, at temperature 1 (`probe_kl`)."""
    lengths = rollout.mask.sum(dim=1).float()  # (B,)
    return {"reward_length_corr": correlation(rollout.scores.float().cpu(), lengths.cpu()),
            "response_length": metrics["response_length"], "entropy": metrics["entropy"]}


def _back_to_healthy(stage: str, trainer: PPOTrainer, monitored: MonitoredTraining,
                     checkpoint_dir: Path) -> int | None:
    """The weights of the last state no monitor doubted: kept in memory, or (after a resume past it) the newest
    checkpoint before the first doubted step. Returns that state's step."""
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    kept = monitored.restore_healthy(unwrapped)
    if kept is not None:
        return kept
    earlier = [(step, path) for step, path in complete_checkpoints(checkpoint_dir)
               if step < monitored.trip.first_bad_step]
    if not earlier:
        log.warning("%s: no healthy state before step %d to go back to; keeping the last one", stage,
                    monitored.trip.first_bad_step)
        return None
    step, path = earlier[-1]
    monitor_state, counter = monitored.monitor.state_dict(), trainer.counter.step
    trainer.accelerator.load_state(str(path))
    monitored.monitor.load_state_dict(monitor_state)
    trainer.counter.step = counter
    return step


def _log_step(cfg: PipelineConfig, stage: str, step: int, metrics: dict[str, float], rollout,
              terms: dict[str, float]) -> None:
    mlflow.log_metrics({**{f"{stage}/{name}": value for name, value in metrics.items()},
                        **{f"{stage}/reward/{name}": value for name, value in terms.items()}},
                       step=step + 1, synchronous=False)
    if (step + 1) % cfg.ppo.sample_table_steps == 0:
        table = {"prompt": rollout.prompts, "response": rollout.responses, "reward": rollout.scores.tolist(),
                 **({"cost": rollout.costs.tolist()} if rollout.costs is not None else {})}
        mlflow.log_table(pd.DataFrame(table).head(16),
                         artifact_file=f"samples/step_{step + 1:05d}.json")


def _save_final(trainer: PPOTrainer, tokenizer, out_dir: Path, base_model: str, weights: dict | None) -> Path:
    """The policy in Hugging Face format (with LoRA, its adapters naming `base_model`), with its value head
    beside it; from `weights` where they were gathered from shards. Written aside, renamed."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    policy, head = submodule_weights(weights, "policy."), submodule_weights(weights, "value_head.")
    return save_trained_model(model.policy, tokenizer, out_dir, base_model, state_dict=policy,
                              also=lambda folder: save_value_head(model.value_head, folder / "value_head.safetensors",
                                                                  head))
