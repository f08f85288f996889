"""Stage: RLOO (Ahmadian et al. 2024), the critic-free RLHF optimizer, on TRL's maintained `RLOOTrainer`.

The SFT model samples `rloo.num_generations` answers to each training prompt; our reward model scores them
(the reward function TRL calls); each answer's advantage is its reward minus the mean of its siblings', so no
value head is trained. The KL to the SFT reference (`rloo.beta`; with LoRA the adapter-disabled base, no copy)
enters the reward as in TRL. Same contract as PPO: cache key, resume from the last complete checkpoint, the
reward-hacking monitors (`rloo.monitors`, per step, so the trainer logs every step), evaluation and gates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import RLOOConfig, RLOOTrainer

from models.checkpoints import complete_checkpoints, last_complete_checkpoint
from models.metrics import correlation
from models.ppo import penalized_scores
from models.prompting import prompt_formatter
from models.reward import reward_scores
from models.sequence_logprobs import causal_lm_response_logprobs
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.data.probes import Probe, probe_set
from tasks.data.readers import read_rows
from tasks.data.rl_inputs import check_same_tokenizer, rl_input_hashes, training_prompts
from tasks.data.validated import validated_file
from tasks.registry.logged_models import load_chain, load_stage_reward_model, log_hf_model, model_chain
from tasks.run.contract import StageResult, follower_result, stage_key, stage_run, work_dir
from tasks.run.ranks import is_main_process
from tasks.training.curves import log_reward_and_kl
from tasks.training.monitoring import MonitoredTraining
from tasks.training.probes import probe_kl, run_probe
from tasks.training.rewards import RuleReward, kinds_by_prompt
from tasks.training.trainer import callbacks, final_log, peft_config, train_and_save, training_arguments

log = logging.getLogger(__name__)

STAGE = "rloo"
SECTIONS = ("rloo", "model", "validation")


def rloo_key(cfg: PipelineConfig, sft: StageResult, data: StageResult, reward: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, rl_input_hashes(sft, reward, data), code=__name__)


def run_rloo(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult,
             reward: StageResult) -> StageResult:
    key = rloo_key(cfg, sft, data, reward)
    stage_dir = work_dir(cfg, STAGE, key)
    parents = {"sft": sft.model_uri, "reward": reward.model_uri}
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, parents=parents, code=__name__) as run:
        preferences = read_rows(validated_file(data, "preferences_train", stage_dir / "data"))
        prompts = training_prompts(preferences, "RLOO", data.outputs["preferences_train"])
        model, tokenizer = load_chain(cfg, model_chain(sft.model_uri, stage_dir / "sft"))
        reward_model, reward_tokenizer = load_stage_reward_model(cfg, reward.model_uri, stage_dir / "reward",
                                                                 dtype="float32")
        check_same_tokenizer(tokenizer, reward_tokenizer, sft.model_uri, reward.model_uri)
        reward_model.eval()
        format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
        reward_fn = RewardModelReward(cfg, reward_model, reward_tokenizer, tokenizer.eos_token_id)
        kinds = kinds_by_prompt(preferences, format_prompt, cfg.rloo.reward_functions,
                                data.outputs["preferences_train"])
        monitoring = _monitoring(cfg, probe_set(preferences, cfg.rloo.monitors.probe_size, cfg.rloo.seed),
                                 tokenizer, format_prompt, reward_fn)
        trainer = _setup_trainer(cfg, model, tokenizer, [format_prompt(p) for p in prompts],
                                 _reward_funcs(cfg, reward_fn, kinds), stage_dir / "checkpoints", monitoring)
        if monitoring:
            monitoring.reference = trainer.ref_model  # None with LoRA: the policy with its adapters disabled
        hf_dir = train_and_save(trainer, tokenizer, stage_dir, sft.model_uri,
                                before_save=monitoring.back_to_healthy if monitoring else None)
        if run is None:  # another process of a launch: it trained; the main one saves, logs and reports
            return follower_result(STAGE, key)
        model_uri = log_hf_model(hf_dir, cfg, STAGE)
        metrics = {**_final_metrics(trainer), "rloo/generated_tokens": float(reward_fn.generated_tokens)}
        if monitoring:
            metrics.update(monitoring.monitored.result_metrics(monitoring.kept_step))
        mlflow.log_metrics(metrics)
        _log_curves(trainer, monitoring)
    return StageResult(stage=STAGE, run_id=run.info.run_id, cache_key=key, model_uri=model_uri, metrics=metrics,
                       output_hashes={"model": key}, input_hashes=rl_input_hashes(sft, reward, data))


class RewardModelReward:
    """Our reward model as a TRL reward function, less the optional missing-EOS and length penalties (as in
    PPO). It remembers its last batch (scores and lengths) for the monitors."""

    __name__ = "reward_model"  # TRL names the logged reward after its function

    def __init__(self, cfg: PipelineConfig, reward_model, reward_tokenizer, eos_token_id: int):
        self.section = cfg.rloo
        self.model, self.tokenizer, self.eos_token_id = reward_model, reward_tokenizer, eos_token_id
        self.batch_size = cfg.rloo.batch_size
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.generated_tokens = 0  # this process's sampled completions, as rewarded

    def __call__(self, prompts: list[str], completions: list[str], completion_ids=None, **_) -> list[float]:
        scores = self.score(prompts, completions).float()  # (B,)
        if completion_ids is not None:
            self.generated_tokens += sum(len(ids) for ids in completion_ids)
            lengths = torch.tensor([len(ids) for ids in completion_ids], dtype=torch.float)  # (B,)
            has_eos = torch.tensor([bool(ids) and ids[-1] == self.eos_token_id for ids in completion_ids])
            scores = penalized_scores(scores, lengths, has_eos, self.section.missing_eos_penalty,
                                      self.section.length_penalty)
            self.last = (scores, lengths)
        return scores.tolist()

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return reward_scores(self.model, self.tokenizer, prompts, responses, batch_size=self.batch_size).cpu()


def _reward_funcs(cfg: PipelineConfig, reward_fn: RewardModelReward, kinds: dict[str, str]) -> list:
    """`reward_functions` as TRL's reward functions, in the config's order (their weights follow it)."""
    return [reward_fn if f.name == "model" else RuleReward(f.name, kinds) for f in cfg.rloo.reward_functions]


def _setup_trainer(cfg: PipelineConfig, model, tokenizer, prompts: list[str], reward_funcs: list,
                   checkpoint_dir: Path, monitoring: MonitorCallback | None) -> RLOOTrainer:
    section = cfg.rloo
    arguments = training_arguments(section, checkpoint_dir)
    if monitoring:
        arguments["logging_steps"] = 1  # the monitors read every step's log
    args = RLOOConfig(
        **arguments,
        num_generations=section.num_generations,
        max_completion_length=section.max_new_tokens,
        temperature=section.temperature,
        top_k=0,
        top_p=1.0,
        beta=section.beta,
        num_iterations=1,
        epsilon=section.clip_range,
        normalize_advantages=section.normalize_advantages,
        reward_weights=[f.weight for f in section.reward_functions],  # TRL logs each function's mean per step
        log_completions=False,
    )
    tokenizer.padding_side = "left"
    return RLOOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        peft_config=peft_config(section.lora, model.config.num_hidden_layers),
        callbacks=[*([monitoring] if monitoring else []), *callbacks(STAGE)],
    )


def _monitoring(cfg: PipelineConfig, probe: Probe, tokenizer, format_prompt, reward_fn: RewardModelReward):
    section = cfg.rloo.monitors
    if not section.enabled:
        return None
    return MonitorCallback(cfg, probe, tokenizer, format_prompt, reward_fn)


class MonitorCallback(TrainerCallback):
    """The reward-hacking monitors on TRL's loop: before each step the probe (when due) and a copy of the
    trainable weights; after it (the trainer logs every step) the step's measurements. A doubted state is not
    checkpointed; a trip stops training, and `back_to_healthy` restores the last healthy weights before the
    stage saves."""

    def __init__(self, cfg: PipelineConfig, probe: Probe, tokenizer, format_prompt, reward_fn: RewardModelReward):
        self.cfg, self.reward_fn = cfg, reward_fn
        section = cfg.rloo.monitors

        def run(step: int) -> dict[str, float]:
            return run_probe(self.model, tokenizer, probe, format_prompt, reward_fn.score,
                             max_new_tokens=cfg.rloo.max_new_tokens, batch_size=cfg.rloo.batch_size,
                             min_words=section.probe_min_words)

        def kl(step: int) -> float:
            return probe_kl(self.model, self._reference_logprobs, tokenizer, probe, format_prompt,
                            max_new_tokens=cfg.rloo.max_new_tokens, batch_size=cfg.rloo.batch_size,
                            seed=cfg.rloo.seed)

        self.monitored = MonitoredTraining(section, STAGE, run, kl_probe=kl, track=is_main_process())
        self.model = None
        self.reference = None  # TRL's reference model, when it keeps one
        self.kept_step: int | None = None

    def _reference_logprobs(self, sampled) -> torch.Tensor:
        """The reference's log-probs of the sampled ids at temperature 1: TRL's reference model, or the policy
        with its LoRA adapters disabled."""
        if self.reference is not None:
            return causal_lm_response_logprobs(self.reference, sampled.sequences, sampled.attention_mask,
                                               sampled.prompt_length)
        with self.model.disable_adapter():
            return causal_lm_response_logprobs(self.model, sampled.sequences, sampled.attention_mask,
                                               sampled.prompt_length)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        resumed = last_complete_checkpoint(Path(args.output_dir))
        if resumed is not None and (resumed / _MONITOR_STATE).is_file():  # baselines and streaks of the resumed run
            self.monitored.monitor.load_state_dict(torch.load(resumed / _MONITOR_STATE, weights_only=True))
        return control

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.monitored.before_step(state.global_step, model)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return control
        step = state.global_step - 1  # the log after step n describes the answers sampled before its update
        length = float(logs.get("completions/mean_length", float("nan")))
        # Not TRL's KL: it is taken at the sampling temperature; the KL budget reads the probe's, at temperature 1.
        measured = {"response_length": length, "entropy": float(logs.get("entropy", float("nan")))}
        if self.reward_fn.last is not None:
            scores, lengths = self.reward_fn.last
            measured["reward_length_corr"] = correlation(scores, lengths)
        self.monitored.after_step(step, measured)
        if self.monitored.monitor.unhealthy:
            control.should_save = False  # a state a monitor doubts is not checkpointed
        if self.monitored.should_stop:
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():  # before MarkCompleteCheckpoints marks it complete
            torch.save(self.monitored.monitor.state_dict(), folder / _MONITOR_STATE)
        return control

    def back_to_healthy(self, trainer) -> None:
        if not self.monitored.should_stop:
            return
        self.kept_step = self.monitored.restore_healthy(trainer.model)
        if self.kept_step is not None:
            return
        first_bad = self.monitored.trip.first_bad_step
        earlier = [(step, path) for step, path in complete_checkpoints(Path(trainer.args.output_dir))
                   if step < first_bad]
        if earlier:
            self.kept_step, path = earlier[-1]
            trainer._load_from_checkpoint(str(path))  # the Trainer's own loader: full weights or adapters
        else:
            log.warning("rloo: no healthy state before step %d to go back to; keeping the last one", first_bad)


_MONITOR_STATE = "monitor_state.pt"


def _log_curves(trainer: RLOOTrainer, monitoring: MonitorCallback | None) -> None:
    logged = [entry for entry in trainer.state.log_history if "reward" in entry and "step" in entry]
    if not logged:
        return
    trip = monitoring.monitored.trip if monitoring else None
    log_reward_and_kl([entry["step"] - 1 for entry in logged], [entry["reward"] for entry in logged],
                      [entry.get("kl", float("nan")) * entry.get("completions/mean_length", float("nan"))
                       for entry in logged], title="RLOO: reward and KL per step",
                      trip_step=trip.step if trip else None)


def _final_metrics(trainer: RLOOTrainer) -> dict[str, float]:
    last = final_log(trainer)
    metrics = {"rloo/global_step": float(trainer.state.global_step)}
    for name in ("reward", "kl", "entropy", "completions/mean_length"):
        if name in last:
            metrics[f"rloo/final_{name.split('/')[-1]}"] = float(last[name])
    return metrics
