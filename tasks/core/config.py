"""The pipeline config: one typed schema, one YAML per pipeline, `--set a.b=c` overrides.

Every field has a default and a one-line help. An unknown key or a bad value raises `ConfigError`
naming the key path (for example `sft.learning_rate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from tasks.core import paths, stage_names
from tasks.core.config_files import HashableConfig, Section, apply_override, read_config_tree, validate_model


class DataSection(Section):
    dir: Path = Field(paths.DATA_DIR, description="Folder holding the datasets (tracked by data.dvc); file names "
                      "below are relative to it.")
    sft_train: str = Field("sft_train.jsonl", description="SFT demonstrations: prompt/completion.")
    sft_eval: str = Field("sft_eval.jsonl", description="Held-out demonstrations for perplexity.")
    preferences_train: str = Field("preferences_train.jsonl", description="Preference pairs: prompt/chosen/rejected.")
    preferences_eval: str = Field("preferences_eval.jsonl", description="Held-out preference pairs.")
    eval_prompts: str = Field("eval_prompts.jsonl", description="Held-out prompts with a `harmful` label.")
    red_team_prompts: str = Field("red_team_prompts.jsonl", description="Red-team prompts for Constitutional AI.")

    def path(self, name: str) -> Path:
        return self.dir / getattr(self, name)


class TinyModelSection(Section):
    """Shape of the demo Llama model built from scratch when no pretrained model is named."""

    hidden_size: int = Field(64, gt=0, description="Width of the residual stream.")
    num_hidden_layers: int = Field(2, gt=0, description="Number of decoder layers.")
    num_attention_heads: int = Field(4, gt=0, description="Attention heads per layer.")
    intermediate_size: int = Field(256, gt=0, description="Width of the MLP.")
    max_position_embeddings: int = Field(256, gt=0, description="Longest sequence the model accepts.")
    vocab_size: int = Field(1024, ge=300, description="Target size of the byte-level BPE vocabulary.")
    init_seed: int = Field(0, description="Seed for the random initial weights.")


class ModelSection(Section):
    pretrained: str | None = Field(
        None, description="Hub id, local folder, or GGUF file (a path, or pkg://<package>/<file>.gguf inside an "
        "installed package) of the base model; None builds the tiny model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the pretrained model.")
    trust_remote_code: bool = Field(False, description="Allow custom model code from the hub. Off unless set.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype for training.")
    prompt_format: Literal["plain", "chat_template"] = Field(
        "plain", description="How a prompt is shown to the model: `plain` template or the tokenizer's chat template."
    )
    prompt_template: str = Field("User: {prompt}\nAssistant:", description="Template used when prompt_format=plain.")
    tiny: TinyModelSection = Field(default_factory=TinyModelSection, description="Tiny model shape (no pretrained).")


class LoraSection(Section):
    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="Module names that get adapters.")
    top_layers: int | None = Field(
        None, gt=0, description="Adapt only the top N decoder layers (None: all). Backpropagation stops at the "
        "lowest adapted layer, so adapting half the layers saves about a third of each step.")


class ValidationSection(Section):
    max_length: int = Field(128, gt=0, description="Longest allowed prompt+response, in tokens.")
    on_failure: Literal["fail", "quarantine"] = Field(
        "fail", description="`fail` stops the flow; `quarantine` moves bad rows aside and continues. (The tiny model's "
        "token lengths are checked after validation, with the tokenizer trained on the data: too-long rows fail.)"
    )
    max_quarantine_fraction: float = Field(
        0.05, ge=0, le=1, description="With quarantine, the flow stops if a file loses more than this share of rows."
    )


class TrainingSection(Section):
    """Optimisation settings shared by the trainer-based stages."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training set.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="Transformers scheduler name.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps used for warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(16, gt=0, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    save_steps: int = Field(20, gt=0, description="Write a checkpoint every N optimizer steps.")
    logging_steps: int = Field(5, gt=0, description="Log training metrics every N steps.")
    seed: int = Field(0, description="Training seed (data order, dropout).")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters via peft.")


class SFTSection(TrainingSection):
    completion_only_loss: bool = Field(True, description="Compute the loss on completions only.")


class RewardSection(TrainingSection):
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Pull mean reward towards zero (Eisenstein et al. 2023); None disables."
    )
    hard_negatives: bool = Field(
        False, description="Also train on each chosen answer over cut-short answers (the rejected one's and its "
        "own first sentence) and over another request's chosen answer, so neither an opener alone nor a good "
        "answer to something else scores high: what PPO exploits otherwise.")


class DPOSection(TrainingSection):
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL penalty to the reference model.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO, IPO or SLiC-style hinge loss.")
    sft_weight: float = Field(0.0, ge=0, description="Weight of an extra NLL term on the chosen responses (RPO).")


class MonitorSection(Section):
    """Reward-hacking monitors of an RL stage (`models.monitors`): each signal is logged every step as
    `monitor/<signal>`; one beyond its threshold for `patience` checks in a row stops the run, which keeps its
    last healthy state, and the gates refuse its candidate. A threshold of null switches that monitor off."""

    enabled: bool = Field(True, description="Compute and log the monitors (and act on them).")
    action: Literal["stop", "warn"] = Field("stop", description="On a trip: stop early and keep the last healthy "
                                            "state (`stop`), or only log it (`warn`); the gates refuse either way.")
    max_abs_reward_length_corr: float | None = Field(
        0.9, gt=0, le=1, description="Largest |correlation| of reward with response length within a batch.")
    min_length_ratio: float | None = Field(
        0.5, gt=0, description="Smallest mean response length, as a share of the SFT policy's (the first step's).")
    max_length_ratio: float | None = Field(2.0, gt=0, description="Largest mean response length, likewise.")
    kl_budget: float | None = Field(None, gt=0, description="Largest KL to the reference, nats per response.")
    min_entropy_ratio: float | None = Field(
        0.2, gt=0, description="Smallest policy entropy, as a share of the first step's.")
    max_gold_gap: float | None = Field(
        0.2, gt=0, description="Largest growth, since the first probe, of the reward model's approval of the "
        "probe answers over the share an independent check (the refusal detector) passes: the reward model "
        "likes what the check does not.")
    patience: int = Field(2, ge=1, description="Bad checks in a row before a monitor trips.")
    probe_steps: int = Field(5, gt=0, description="Run the probe set every N steps (and before the first).")
    probe_size: int = Field(32, gt=0, description="Fixed training prompts in the probe set, half of them ones whose "
                            "preferred answer is a refusal.")
    probe_min_words: int = Field(5, ge=1, description="Words an answer to a request that should not be refused "
                                 "needs to count as an answer.")


class PPOSection(Section):
    """Our PPO (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022) on a policy with a value head."""

    steps: int = Field(60, gt=0, description="PPO iterations: one rollout batch and its updates each.")
    rollout_batch_size: int = Field(32, gt=0, description="Prompts sampled per iteration.")
    mini_batch_size: int = Field(16, gt=0, description="Rollouts per gradient step.")
    ppo_epochs: int = Field(4, gt=0, description="Passes over each rollout batch (K epochs).")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate for policy and value head.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    clip_range_value: float = Field(0.2, gt=0, description="Value prediction clip epsilon.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(True, description="Normalise advantages per batch.")
    target_approx_kl: float | None = Field(0.1, gt=0, description="Stop the epochs early once approx KL exceeds this.")
    kl_controller: Literal["fixed", "adaptive"] = Field("adaptive", description="KL coefficient schedule.")
    init_kl_coef: float = Field(0.05, ge=0, description="Initial per-token KL penalty coefficient.")
    kl_target: float | None = Field(6.0, gt=0, description="Target sequence KL for the adaptive controller.")
    kl_horizon: int = Field(10000, gt=0, description="Adaptive controller horizon, in samples.")
    max_new_tokens: int = Field(32, gt=0, description="Tokens sampled per response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for rollouts.")
    missing_eos_penalty: float | None = Field(None, description="Subtracted from the score of responses with no EOS.")
    length_penalty: float = Field(0.0, ge=0, description="Subtracted from the score per response token.")
    critic: Literal["value_head", "separate"] = Field(
        "value_head", description="Value head on the policy trunk, or a separate critic from the reward model."
    )
    save_steps: int = Field(20, gt=0, description="Checkpoint every N iterations.")
    sample_table_steps: int = Field(20, gt=0, description="Log a table of sample completions every N iterations.")
    seed: int = Field(0, description="Seed for sampling and prompt order.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters; the reference is then the base.")
    monitors: MonitorSection = Field(default_factory=MonitorSection, description="Reward-hacking monitors.")

    @model_validator(mode="after")
    def _minibatch_divides_batch(self) -> PPOSection:
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"mini_batch_size ({self.mini_batch_size})")
        if self.kl_controller == "adaptive" and self.kl_target is None:
            raise ValueError("kl_controller=adaptive needs kl_target")
        return self


class RLOOSection(TrainingSection):
    """RLOO (Ahmadian et al. 2024) on TRL's `RLOOTrainer`: `batch_size` answers per step, `num_generations` per
    prompt, each judged against the mean of its siblings; no value head."""

    num_generations: int = Field(4, ge=2, description="Answers sampled per prompt: the leave-one-out group.")
    max_new_tokens: int = Field(32, gt=0, description="Tokens sampled per answer.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    beta: float = Field(0.05, ge=0, description="KL coefficient against the SFT reference (0: no reference).")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    normalize_advantages: bool = Field(True, description="Normalise advantages per batch.")
    missing_eos_penalty: float | None = Field(None, description="Subtracted from the reward of answers with no EOS.")
    length_penalty: float = Field(0.0, ge=0, description="Subtracted from the reward per answer token.")
    monitors: MonitorSection = Field(default_factory=MonitorSection, description="Reward-hacking monitors.")

    @model_validator(mode="after")
    def _groups_fill_the_batch(self) -> RLOOSection:
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations}): whole groups of answers per step")
        return self


class MetricGate(Section):
    """An absolute bar a candidate metric must clear."""

    metric: str = Field(description="Metric name as the evaluate stage logs it, e.g. eval/harmful_refusal_rate.")
    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")

    @model_validator(mode="after")
    def _has_a_bound(self) -> MetricGate:
        if self.min is None and self.max is None:
            raise ValueError(f"gate on {self.metric!r} needs a min or a max")
        return self


class ChampionGate(Section):
    """A metric on which the candidate must not be worse than the current champion, on the same eval set."""

    metric: str = Field(description="Metric name as the evaluate stage logs it.")
    higher_is_better: bool = Field(True, description="Direction of 'better' for this metric.")
    margin: float = Field(0.02, ge=0, description="How much worse than the champion is still acceptable.")


class GatesSection(Section):
    thresholds: list[MetricGate] = Field(default_factory=list, description="Absolute bars, all must pass.")
    beat_baseline: list[ChampionGate] = Field(
        default_factory=list, description="Metrics on which the candidate must beat the SFT baseline (margin 0 = tie ok)."
    )
    champion: list[ChampionGate] = Field(
        default_factory=list, description="Metrics on which the candidate may not fall behind the champion."
    )
    rank_metric: str = Field("eval/reward_mean", description="Among candidates that pass, the best on this wins.")
    rank_higher_is_better: bool = Field(True, description="Direction of 'best' for rank_metric.")


class EvalSection(Section):
    max_new_tokens: int = Field(48, gt=0, description="Tokens generated per held-out prompt (greedy).")
    batch_size: int = Field(32, gt=0, description="Prompts generated per batch.")
    score_batch_size: int = Field(32, gt=0, description="Sequences per forward pass when scoring (log-probs, "
                                  "rewards): its logits hold batch x length x vocabulary floats.")
    logged_samples: int = Field(16, ge=0, description="Generations logged as an MLflow table.")
    kl_samples: int = Field(1, ge=1, description="Sampled responses per prompt for the KL(policy || reference) estimate.")
    seed: int = Field(0, description="Seed for the sampled responses.")
    base: bool = Field(False, description="Also evaluate the base model (run `evaluate-base`): the 'before' of a "
                       "before/after table, and the reference of each model's `benign_perplexity_ratio_vs_base`.")


class RegistrySection(Section):
    policy_name: str = Field("alignflow-policy", description="Registered model name for policies.")
    reward_name: str = Field("alignflow-reward", description="Registered model name for reward models.")
    reward_alias: str = Field("newest", description="Alias of the newest reward model ('latest' is reserved by MLflow).")
    candidate_alias: str = Field("candidate", description="Alias given to the newest trained policy.")
    champion_alias: str = Field("champion", description="Alias of the promoted policy.")
    previous_champion_alias: str = Field("previous-champion", description="Alias the displaced champion keeps.")


class WorldSection(Section):
    """The real-language safety world (`alignflow data world`): prompts from a catalogue, answers from the base
    model itself (on-policy), written to `data.dir` as a new DVC data version."""

    catalogue: Path = Field(Path("configs/safety_world.yaml"), description="Kinds, categories and requests.")
    seed: int = Field(0, description="Seed for phrasings, sampled answers and which requests get demos.")
    train_phrasings: int = Field(1, ge=1, description="Wordings of each training request (held-out ones get one).")
    sft_refusal_share: float = Field(
        0.1, ge=0, le=1, description="The SFT demo budget: share of harmful training requests with an aligned "
        "(refusing) demonstration. Benign requests get the base model's own answers.")
    max_new_tokens: int = Field(48, gt=0, description="Tokens the base model writes per answer.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the base model's compliant "
                               "answers to harmful requests (the rejected side of their pairs).")
    batch_size: int = Field(64, gt=0, description="Prompts generated per batch.")
    dvc_add: bool = Field(True, description="Version `data.dir` with DVC (it must lie inside a DVC repository).")


class TrackingSection(Section):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; None uses $MLFLOW_TRACKING_URI or SQLite.")
    experiment: str = Field("alignflow", description="MLflow experiment name.")


_DispatchedStage = Literal[stage_names.DISPATCHABLE]


class DispatchSection(Section):
    """Where stages run: in the pipeline's own process, or as deployments on Prefect work pools.

    Where a stage runs never changes what it computes, so this section is left out of the config hash.
    The tracking URI must be an MLflow server both the pipeline and the workers reach.
    """

    pools: dict[_DispatchedStage, str] = Field(
        default_factory=dict, description="Stage -> Prefect work pool whose worker runs it, as deployment "
        "`<flow>/<pool>` (see infra/prefect.yaml). Stages not listed run in the pipeline's process.")
    accelerate: dict[_DispatchedStage, str] = Field(
        default_factory=dict, description="Stage -> accelerate config file (infra/accelerate/*.yaml): the worker "
        "runs the stage with `accelerate launch` on all its GPUs (DDP, FSDP, DeepSpeed ZeRO-3).")
    flow: str = Field("alignflow-stage", description="Name of the stage flow the pools' deployments run.")
    poll_interval_s: float = Field(5.0, gt=0, description="How often the pipeline polls a dispatched stage.")
    timeout_s: float | None = Field(None, gt=0, description="Give up on a dispatched stage after this long; None waits.")


class PipelineConfig(HashableConfig):
    # Where stages run and where they are logged never change what they compute.
    _unhashed_sections: ClassVar[tuple[str, ...]] = ("dispatch", "tracking")

    name: str = Field("demo", description="Pipeline name, used in run names.")
    optimizers: list[Literal[stage_names.OPTIMIZERS]] = Field(
        ["dpo"], description="Preference optimizers to run after SFT; each yields a candidate. [] gates the SFT model."
    )
    work_dir: Path = Field(paths.WORK_DIR, description="Stage work folders: checkpoints, quarantine, caches.")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    ppo: PPOSection = Field(default_factory=PPOSection)
    rloo: RLOOSection = Field(default_factory=RLOOSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    world: WorldSection = Field(default_factory=WorldSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    dispatch: DispatchSection = Field(default_factory=DispatchSection)

    @model_validator(mode="after")
    def _tiny_model_constraints(self) -> PipelineConfig:
        if self.model.pretrained is not None:
            return self
        if self.validation.max_length > self.model.tiny.max_position_embeddings:
            raise ValueError(
                f"validation.max_length ({self.validation.max_length}) exceeds "
                f"model.tiny.max_position_embeddings ({self.model.tiny.max_position_embeddings})"
            )
        if self.model.prompt_format == "chat_template":
            raise ValueError("model.prompt_format=chat_template needs model.pretrained: the tiny model has no chat template")
        return self



def load_config(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (following `extends:`), apply `key.path=value` overrides and validate it."""
    raw = read_config_tree(Path(path))
    for override in overrides or []:
        apply_override(raw, override)
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    return validate_model(PipelineConfig, raw, source)
